"""A local Apicurio Registry: the schema registry our topics' values are framed for.

Every registry-aware Kafka reader (Kafka Connect's AvroConverter, ksqlDB, Flink's
``avro-confluent``, ClickHouse's ``AvroConfluent``, confluent-kafka's ``AvroDeserializer``)
expects a value to start with magic byte 0 and a 4-byte schema id, resolved through a registry
with Confluent's REST API. Apicurio Registry serves that API at ``/apis/ccompat/v7``.

No tarball and no Docker: ``install()`` builds the server from Maven Central with ``mvn``
(``templates/apicurio-pom.xml``: Apicurio's application module plus Quarkus's build plugin)
into ``service_dir("schema_registry")/app-<version>``; ``start()`` runs
``java -jar apicurio-registry-runner-1-runner.jar`` on loopback. Schemas live in an H2 file
database under ``service_dir("schema_registry")/data`` and survive restarts, like Kafka's data:
a schema id written into a record must keep naming the same schema.

Version: 2.4.2.Final, the newest release whose parts are all on Maven Central (the 2.5, 2.6
and 3.x application modules depend on a schema-util-provider that is not published there). It
runs on the default Java 17. Endpoint: ``http://127.0.0.1:18081``
(``INBOXSTREAM_SCHEMA_REGISTRY_PORT``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from inboxstream.core.lifetime import pid_alive
from inboxstream.infra.common import (
    InfraError,
    ServiceStatus,
    env_port,
    log_dir,
    port_open,
    read_pid,
    run,
    service_dir,
    spawn,
    stop_pid,
)
from inboxstream.infra.kafka import ensure_java_and_maven, java

NAME = "schema_registry"
APICURIO_VERSION = "2.4.2.Final"
#: The Quarkus that Apicurio 2.4.2.Final is built with (its parent POM's quarkus.version).
QUARKUS_VERSION = "2.16.4.Final"
HOST = "127.0.0.1"
DEFAULT_PORT = 18081
#: The Confluent-compatible API under the server's root.
CCOMPAT_PATH = "/apis/ccompat/v7"
HEAP_OPTS = ("-Xms64m", "-Xmx256m")
_POM_TEMPLATE = Path(__file__).parent / "templates" / "apicurio-pom.xml"
_RUNNER = "apicurio-registry-runner-1-runner.jar"


def _dir() -> Path:
    return service_dir(NAME)


def _app_dir() -> Path:
    return _dir() / f"app-{APICURIO_VERSION}"


def _data_dir() -> Path:
    return _dir() / "data"


def _pidfile() -> Path:
    return _dir() / "registry.pid"


def _log() -> Path:
    return log_dir() / "schema-registry.log"


def port() -> int:
    return env_port("INBOXSTREAM_SCHEMA_REGISTRY_PORT", DEFAULT_PORT)


def url() -> str:
    """The Confluent-compatible API's base URL (what ``kafka.schema_registry_url`` names)."""
    return f"http://{HOST}:{port()}{CCOMPAT_PATH}"


def installed() -> bool:
    return (_app_dir() / _RUNNER).is_file() and (_app_dir() / "lib").is_dir()


def install() -> bool:
    """Build the server from Maven Central unless present; True if it built."""
    if installed():
        return False
    ensure_java_and_maven()
    build = _dir() / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    (build / "pom.xml").write_text(
        _POM_TEMPLATE.read_text()
        .replace("@APICURIO_VERSION@", APICURIO_VERSION)
        .replace("@QUARKUS_VERSION@", QUARKUS_VERSION)
    )
    print(f"schema_registry: building Apicurio Registry {APICURIO_VERSION} ...", flush=True)
    started = time.monotonic()
    run(["mvn", "-B", "-q", "package", "-DskipTests"], cwd=build, timeout=1800)
    target = build / "target"
    if not (target / _RUNNER).is_file():
        raise InfraError(f"mvn did not produce {target / _RUNNER}")
    staging = _app_dir().with_name(_app_dir().name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.move(str(target / _RUNNER), staging / _RUNNER)
    shutil.move(str(target / "lib"), staging / "lib")
    shutil.rmtree(_app_dir(), ignore_errors=True)
    staging.rename(_app_dir())
    shutil.rmtree(build, ignore_errors=True)
    print(f"schema_registry: built in {time.monotonic() - started:.0f}s", flush=True)
    return True


def _running_pid() -> int | None:
    pid = read_pid(_pidfile())
    if pid is None or not pid_alive(pid):
        return None
    with contextlib.suppress(OSError):
        if _RUNNER.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # a recycled pid
    return pid


def serving(timeout: float = 2.0) -> bool:
    """The API answers (not merely the port): ``GET /subjects`` gives a JSON list."""
    try:
        with urllib.request.urlopen(f"{url()}/subjects", timeout=timeout) as response:
            return isinstance(json.load(response), list)
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start(timeout: float = 120) -> bool:
    """Start the registry unless ours is serving; True if this call started it."""
    pid = _running_pid()
    if pid is not None:
        _wait_serving(pid, timeout)
        return False
    if port_open(HOST, port()):
        raise InfraError(
            f"{HOST}:{port()} (schema registry port) is in use by a process that is not our "
            "registry. Stop it, or pick another port with INBOXSTREAM_SCHEMA_REGISTRY_PORT."
        )
    if not installed():
        raise InfraError(
            f"Apicurio Registry {APICURIO_VERSION} is not installed; run "
            "`inboxstream infra install schema_registry`"
        )
    _data_dir().mkdir(parents=True, exist_ok=True)
    cmd = [
        java(),
        *HEAP_OPTS,
        f"-Dquarkus.http.host={HOST}",
        f"-Dquarkus.http.port={port()}",
        # Schemas must outlive the process: a record's schema id names them for good.
        f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{_data_dir() / 'registry'}",
        "-Dquarkus.datasource.jdbc.min-size=1",
        "-Dquarkus.datasource.jdbc.initial-size=1",
        "-jar",
        str(_app_dir() / _RUNNER),
    ]
    pid = spawn(cmd, log=_log(), cwd=_dir())
    _pidfile().write_text(f"{pid}\n")
    try:
        _wait_serving(pid, timeout)
    except BaseException:
        with contextlib.suppress(InfraError):
            stop_pid(pid, timeout=30, what="schema registry")
        _pidfile().unlink(missing_ok=True)
        raise
    return True


def _wait_serving(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving():
            return
        if not pid_alive(pid):
            raise InfraError(f"the schema registry exited during start; see {_log()}")
        time.sleep(0.3)
    raise InfraError(f"the schema registry did not answer within {timeout:.0f}s; see {_log()}")


def stop() -> None:
    pid = _running_pid()
    if pid is not None:
        stop_pid(pid, timeout=30, what="schema registry")
    _pidfile().unlink(missing_ok=True)


def status() -> ServiceStatus:
    pid = _running_pid()
    state = "serving" if pid is not None and serving() else "stopped"
    return ServiceStatus(
        name=NAME,
        installed=installed(),
        running=pid is not None,
        pid=pid,
        endpoints={"ccompat": url()},
        detail=f"Apicurio Registry {APICURIO_VERSION}, {state}; data {_data_dir()}; log {_log()}",
    )

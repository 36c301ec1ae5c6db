"""A local single-node Apache Kafka (KRaft, broker and controller in one JVM), loopback only.

No tarball and no Docker: ``install()`` resolves the broker jars from Maven Central with ``mvn``
(``templates/kafka-pom.xml``) into ``service_dir("kafka")/libs-<version>``, and ``start()`` runs
``java -cp 'libs/*' kafka.Kafka server.properties``. The topic data and the KRaft metadata log
live in ``service_dir("kafka")/data`` and survive restarts; broker logs go to
``log_dir()/kafka.log``.

Endpoints: the broker on ``127.0.0.1:19092`` (``INBOXSTREAM_KAFKA_PORT``) and the KRaft
controller on ``127.0.0.1:19093`` (``INBOXSTREAM_KAFKA_CONTROLLER_PORT``).

Version: Kafka 4.4.0, the newest release on Maven Central when this was written (4.0.0 to
4.4.0 exist). aiokafka 0.14 negotiates every request version from the broker's ApiVersions
answer, and against 4.4.0 it does everything we need: admin create_topics with
cleanup.policy=compact, idempotent produce, read_committed consume, consumer groups, commit
and abort of transactions and send_offsets_to_transaction (tests/integration/
test_infra_kafka.py checks all of it). Kafka 4.x needs Java 17 for the broker.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import socket
import string
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from inboxstream.core.lifetime import pid_alive
from inboxstream.infra.common import (
    InfraError,
    ServiceStatus,
    apt_install,
    env_port,
    log_dir,
    port_open,
    read_pid,
    run,
    service_dir,
    spawn,
    stop_pid,
    wait_for_port,
)

NAME = "kafka"
#: Newest Apache Kafka on Maven Central that aiokafka 0.14 works with (see the module docstring).
KAFKA_VERSION = "4.4.0"
#: The log4j2 that kafka_2.13 4.4.0 itself depends on (log4j-api/log4j-core 2.25.5); the SLF4J
#: binding must match it.
LOG4J2_VERSION = "2.25.5"
#: Kafka 4.x brokers refuse to run on anything older.
MIN_JAVA = 17

HOST = "127.0.0.1"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093

#: A modest heap: the box has 2 cores and runs ClickHouse and Dovecot too. Override with
#: INBOXSTREAM_KAFKA_HEAP_OPTS (a space-separated list of JVM options).
HEAP_OPTS = ("-Xmx1g", "-Xms256m")
#: The GC settings of Kafka's own kafka-run-class.sh.
JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_POM_TEMPLATE = _TEMPLATES / "kafka-pom.xml"
_PROPERTIES_TEMPLATE = _TEMPLATES / "kafka-server.properties"
_LOG4J2_CONFIG = _TEMPLATES / "kafka-log4j2.xml"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_VERSION_RE = re.compile(r"Kafka version: (\S+)")


# --- paths and settings ----------------------------------------------------------------------


def _dir() -> Path:
    return service_dir(NAME)


def _libs_dir() -> Path:
    return _dir() / f"libs-{KAFKA_VERSION}"


def _complete_marker() -> Path:
    """Written last by install(): a half-copied libs folder is not an installation."""
    return _libs_dir() / ".complete"


def _data_dir() -> Path:
    return _dir() / "data"


def _properties_path() -> Path:
    return _dir() / "server.properties"


def _pidfile() -> Path:
    return _dir() / "kafka.pid"


def _log_offset_file() -> Path:
    """Size of kafka.log when the current broker was spawned: its own lines start there."""
    return _dir() / "kafka.log.offset"


def _lockfile() -> Path:
    return _dir() / ".lock"


def _log() -> Path:
    return log_dir() / "kafka.log"


def broker_port() -> int:
    return env_port("INBOXSTREAM_KAFKA_PORT", DEFAULT_PORT)


def controller_port() -> int:
    return env_port("INBOXSTREAM_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)


def bootstrap_servers() -> str:
    """What clients pass as ``bootstrap_servers`` (the broker listener, not the controller)."""
    return f"{HOST}:{broker_port()}"


def log_file() -> Path:
    """The broker's log (log4j2 output plus anything the JVM prints)."""
    return _log()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise install/start/stop between processes (say, the demo and a test run)."""
    with open(_lockfile(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- install ---------------------------------------------------------------------------------


def installed() -> bool:
    marker = _complete_marker()
    # an installation from before the tools were part of it is redone once
    return marker.exists() and f"kafka-tools-{KAFKA_VERSION}.jar" in marker.read_text()


#: The stock command-line tools, as the Kafka distribution names their scripts.
TOOLS = {
    "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer.sh": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer.sh": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-consumer-groups.sh": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-transactions.sh": "org.apache.kafka.tools.TransactionsCommand",
    "kafka-get-offsets.sh": "org.apache.kafka.tools.GetOffsetShell",
}


def bin_dir() -> Path:
    """Where the tools' scripts are (``kafka-topics.sh --bootstrap-server ... --list``)."""
    return _dir() / "bin"


def _write_tool_scripts() -> None:
    """One script per tool, as in the distribution's bin/: the same class on our class path,
    warnings and errors of the tools' own logging to stderr."""
    bin_dir().mkdir(parents=True, exist_ok=True)
    for script, main_class in TOOLS.items():
        path = bin_dir() / script
        path.write_text(
            "#!/bin/sh\n"
            f"# {script} of Apache Kafka {KAFKA_VERSION} (written by inboxstream infra)\n"
            f"exec {shlex.quote(java())} -Xmx256m -Dlog4j2.level=WARN "
            f'-cp {shlex.quote(_classpath())} {main_class} "$@"\n'
        )
        path.chmod(0o755)


def install() -> bool:
    """Resolve the broker jars from Maven Central unless present; True if it downloaded.

    The jars are copied out of the local Maven repository (~/.m2, or ``-Dmaven.repo.local`` in
    MAVEN_OPTS) so the broker's class path is one folder we own, versioned by KAFKA_VERSION.
    """
    with _locked():
        if installed():
            return False
        ensure_java_and_maven()
        libs = _libs_dir()
        staging = libs.with_name(libs.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        pom = _dir() / f"pom-{KAFKA_VERSION}.xml"
        pom.write_text(
            _POM_TEMPLATE.read_text()
            .replace("@KAFKA_VERSION@", KAFKA_VERSION)
            .replace("@LOG4J2_VERSION@", LOG4J2_VERSION)
        )
        print(
            f"kafka: resolving Apache Kafka {KAFKA_VERSION} jars from Maven Central ...", flush=True
        )
        started = time.monotonic()
        run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            cwd=_dir(),
            timeout=1200,
        )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if f"kafka_2.13-{KAFKA_VERSION}.jar" not in jars:
            raise InfraError(f"mvn did not produce kafka_2.13-{KAFKA_VERSION}.jar in {staging}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        _write_tool_scripts()
        _complete_marker().write_text("\n".join(jars) + "\n")
        print(f"kafka: {len(jars)} jars in {libs} ({time.monotonic() - started:.0f}s)", flush=True)
        return True


def ensure_java_and_maven() -> None:
    """java (17+) and mvn; from Debian packages when missing, as on a fresh CI machine."""
    missing = []
    if shutil.which("java") is None:
        missing.append(f"openjdk-{MIN_JAVA}-jre-headless")
    if shutil.which("mvn") is None:
        missing.append("maven")
    if missing:
        try:
            apt_install(missing)
        except (FileNotFoundError, InfraError) as exc:
            raise InfraError(
                f"Kafka needs Java {MIN_JAVA}+ and Maven (mvn) on PATH; "
                f"installing {', '.join(missing)} failed: {exc}"
            ) from exc
    major = _java_major()
    if major < MIN_JAVA:
        raise InfraError(f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but `java` is {major}")


def _java_major() -> int:
    proc = run([java(), "-version"], timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise InfraError(f"cannot tell the Java version from: {proc.stderr.strip()[:200]}")
    major = int(match.group(1))
    # Java 8 and older say "1.8.0_..."
    return int(match.group(2) or 0) if major == 1 else major


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java") or "java"


# --- configuration and storage ---------------------------------------------------------------


def _render_properties() -> Path:
    """Write server.properties for the current ports; done on every start (cheap, idempotent)."""
    text = string.Template(_PROPERTIES_TEMPLATE.read_text()).substitute(
        broker_port=broker_port(),
        controller_port=controller_port(),
        data_dir=_data_dir(),
    )
    path = _properties_path()
    path.write_text(text)
    return path


def _classpath() -> str:
    # The JVM expands a trailing "/*" itself: every jar in the folder, no shell involved.
    return f"{_libs_dir()}/*"


def _java_cmd(
    main_class: str, *args: str, heap: tuple[str, ...] = HEAP_OPTS, root_level: str = "INFO"
) -> list[str]:
    return [
        java(),
        *heap,
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={_LOG4J2_CONFIG}",
        f"-Dinboxstream.kafka.loglevel={root_level}",
        f"-Dkafka.logs.dir={log_dir()}",
        "-cp",
        _classpath(),
        main_class,
        *args,
    ]


def _heap_opts() -> tuple[str, ...]:
    override = os.environ.get("INBOXSTREAM_KAFKA_HEAP_OPTS")
    return tuple(override.split()) if override else HEAP_OPTS


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, URL-safe base64 without padding.

    Same rules as Kafka's Uuid.randomUuid(): never the reserved zero/one ids, never starting
    with "-" (it would read as a command-line flag). Doing it here saves a JVM start
    (``kafka-storage random-uuid``).
    """
    while True:
        raw = uuid.uuid4().bytes
        if raw in (bytes(16), bytes(15) + b"\x01"):
            continue
        value = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


def _formatted() -> bool:
    return (_data_dir() / "meta.properties").exists()


def _format_storage(properties: Path) -> None:
    """Format the KRaft log dir once; later starts reuse it (and its cluster id) as is.

    A static voter set (controller.quorum.voters in server.properties) means no
    ``--standalone``; ``--ignore-formatted`` makes a repeated call harmless.
    """
    _data_dir().mkdir(parents=True, exist_ok=True)
    cmd = _java_cmd(
        _STORAGE_TOOL,
        "format",
        "--cluster-id",
        new_cluster_id(),
        "--config",
        str(properties),
        "--ignore-formatted",
        heap=("-Xmx256m",),
        root_level="WARN",
    )
    proc = run(cmd, timeout=300, check=False)
    with open(_log(), "a") as out:
        out.write(f"[inboxstream] {_STORAGE_TOOL} format (exit {proc.returncode}):\n")
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not _formatted():
        tail = (proc.stderr or proc.stdout)[-1500:]
        raise InfraError(
            f"formatting Kafka storage in {_data_dir()} failed "
            f"(exit {proc.returncode}): {tail}; see {_log()}"
        )


# --- process control -------------------------------------------------------------------------


def _is_ours(pid: int) -> bool:
    """The process is a Kafka broker started from our server.properties (not a reused pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _MAIN_CLASS.encode() in args and str(_properties_path()).encode() in args


def _find_pid() -> int | None:
    """Our broker's pid: from the pidfile, else by scanning /proc (a lost or stale pidfile)."""
    pid = read_pid(_pidfile())
    if pid is not None and _is_ours(pid):
        return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_ours(int(entry.name)) and pid_alive(int(entry.name)):
            _pidfile().write_text(f"{entry.name}\n")
            return int(entry.name)
    _pidfile().unlink(missing_ok=True)
    return None


def _running_libs(pid: int) -> str | None:
    """The libs folder on the running broker's class path (says which version it runs)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return Path(args[args.index("-cp") + 1]).parent.name
    return None


def _spawn_offset() -> int:
    try:
        return int(_log_offset_file().read_text().strip())
    except (OSError, ValueError):
        return 0


def running_version() -> str | None:
    """The version the running broker reported at startup ("Kafka version: X" in its log)."""
    if _find_pid() is None:
        return None
    offset = _spawn_offset()
    try:
        with open(_log(), "rb") as handle:
            if offset > handle.seek(0, os.SEEK_END):
                offset = 0  # the log was truncated or replaced since the spawn
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = _VERSION_RE.findall(text)
    return found[-1] if found else None


def _metadata_brokers(port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Ask the broker for cluster metadata over the Kafka protocol; its live brokers.

    A raw Metadata v1 request (no client library, no event loop: start() may be called from
    sync code or inside a running loop; Kafka 4.4 accepts Metadata v0-v13). A KRaft broker only
    processes requests once it has caught up with the metadata log and is unfenced, so a
    non-empty broker list means "serving". Raises OSError or ValueError when the peer does not
    answer like a Kafka broker.
    """
    client_id = b"inboxstream-infra"
    correlation_id = 0x1B5
    # Request header v1 (api_key=3 Metadata, version 1); body: an empty topic list (brokers
    # only; -1 would mean "all topics").
    request = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    request += struct.pack(">i", 0)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        if not 0 < size < 64 * 1024 * 1024:
            raise ValueError(f"not a Kafka response (size {size})")
        data = _recv_exact(sock, size)
    got_id, count = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError(f"not a Kafka response (correlation id {got_id})")
    pos, brokers = 8, []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", data, pos)
        pos += 6
        host = data[pos : pos + host_len].decode()
        pos += host_len
        broker_port_, rack_len = struct.unpack_from(">ih", data, pos)
        pos += 6 + max(rack_len, 0)
        brokers.append((node_id, host, broker_port_))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _serving() -> bool:
    with contextlib.suppress(OSError, ValueError, struct.error):
        return bool(_metadata_brokers(broker_port()))
    return False


def _log_hint(since: int = 0) -> str:
    """The last error lines of the broker log, for an exception message."""
    try:
        with open(_log(), "rb") as handle:
            handle.seek(since)
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in lines if " ERROR " in ln or "Exception" in ln or "Error:" in ln]
    picked = (errors or lines)[-5:]
    return ("; last log lines:\n  " + "\n  ".join(ln[:300] for ln in picked)) if picked else ""


def _wait_serving(pid: int, timeout: float, log_offset: int) -> None:
    """Wait for the listener and then a Metadata answer; fail fast if the JVM exits."""
    deadline = time.monotonic() + timeout
    port = broker_port()
    while True:
        if not pid_alive(pid):
            raise InfraError(
                f"Kafka (pid {pid}) exited during startup; see {_log()}{_log_hint(log_offset)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InfraError(
                f"Kafka (pid {pid}) did not serve metadata on {HOST}:{port} "
                f"within {timeout:.0f}s; see {_log()}{_log_hint(log_offset)}"
            )
        try:
            # Short slices so a crashed JVM is noticed at once, not after the whole timeout.
            wait_for_port(HOST, port, min(1.0, remaining), what="Kafka broker", log=_log())
        except InfraError:
            continue
        if _serving():
            return
        time.sleep(0.2)


def start(timeout: float = 120) -> bool:
    """Start the broker unless ours is already serving; True if this call started it.

    Formats the storage on first use, spawns the JVM detached, writes the pidfile and waits
    until the broker answers a Metadata request (not merely until the port opens).
    """
    with _locked():
        pid = _find_pid()
        if pid is not None:
            # Ours is up, or still starting (another start() spawned it): wait, don't respawn.
            if not _serving():
                _wait_serving(pid, timeout, _spawn_offset())
            return False
        for what, port in (("broker", broker_port()), ("controller", controller_port())):
            if port_open(HOST, port):
                raise InfraError(
                    f"{HOST}:{port} (Kafka {what} port) is in use by a process that is not our "
                    f"broker (no Kafka from {_properties_path()} is running). Stop it, or pick "
                    "other ports with INBOXSTREAM_KAFKA_PORT / INBOXSTREAM_KAFKA_CONTROLLER_PORT."
                )
        if not installed():
            raise InfraError(
                f"Kafka {KAFKA_VERSION} is not installed; run kafka.install() "
                "(or `inboxstream infra install`)"
            )
        properties = _render_properties()
        if not _formatted():
            _format_storage(properties)
        log = _log()
        log.touch()
        offset = log.stat().st_size
        _log_offset_file().write_text(f"{offset}\n")
        pid = spawn(_java_cmd(_MAIN_CLASS, str(properties), heap=_heap_opts()), log=log, cwd=_dir())
        _pidfile().write_text(f"{pid}\n")
        try:
            _wait_serving(pid, timeout, offset)
        except BaseException:
            with contextlib.suppress(InfraError):
                stop_pid(pid, timeout=30, what="Kafka broker")
            _pidfile().unlink(missing_ok=True)
            raise
        return True


def stop() -> None:
    """Stop our broker: SIGTERM (a controlled shutdown that flushes the log), wait for exit."""
    with _locked():
        pid = _find_pid()
        if pid is not None:
            # A clean shutdown writes recovery checkpoints, so the next start skips log recovery.
            stop_pid(pid, timeout=90, what="Kafka broker")
        _pidfile().unlink(missing_ok=True)


def status() -> ServiceStatus:
    """Installed, running (our JVM alive), pid, endpoints; detail says if it serves requests."""
    pid = _find_pid()
    endpoints = {
        "bootstrap": bootstrap_servers(),
        "controller": f"{HOST}:{controller_port()}",
    }
    if pid is None:
        detail = f"Apache Kafka {KAFKA_VERSION} (KRaft); data {_data_dir()}"
    else:
        libs = _running_libs(pid)
        running = libs.removeprefix("libs-") if libs else "unknown version"
        state = "serving" if _serving() else "not answering metadata requests yet"
        detail = f"Apache Kafka {running} (KRaft), {state}; data {_data_dir()}; log {_log()}"
        if libs and libs != _libs_dir().name:
            detail += f"; restart to run {KAFKA_VERSION}"
    return ServiceStatus(
        name=NAME,
        installed=installed(),
        running=pid is not None,
        pid=pid,
        endpoints=endpoints,
        detail=detail,
    )

"""The command line as operators use it: expected failures end as one line on stderr and a
documented exit code (app/failures.py), never a traceback; ``process`` stops cleanly on
SIGTERM; logs in JSON carry inbox and folder; ``inbox status --json``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from inboxstream.app.failures import EX_CONFIG, EX_DATAERR, EX_UNAVAILABLE
from inboxstream.core.kafka import client_options
from inboxstream.core.settings import Settings, TopicSettings
from tests.helpers.service import deliver_many, service_env
from tests.helpers.services import MailUser

CLI = str(Path(sys.executable).with_name("inboxstream"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXSTREAM_")}
    env["INBOXSTREAM_HOME"] = str(tmp_path / "home")
    env["INBOXSTREAM_CLICKHOUSE__PATH"] = str(tmp_path / "chdb")
    env["COLUMNS"] = "60"  # a narrow terminal must not wrap the line either
    return env


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, done.stderr
    return ours[0]


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        ("kafka = [\n", EX_CONFIG, "not valid TOML"),
        ('log_level = "LOUD"\n', EX_CONFIG, "log_level"),
        ('[kafka]\nbootstrap_servers = "nonsense"\n', EX_CONFIG, "host:port"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_78(
    tmp_path: Path, config: str, code: int, words: str
) -> None:
    path = tmp_path / "inboxstream.toml"
    path.write_text(config)
    done = run(["--config", str(path), "topics", "create"], clean_env(tmp_path), tmp_path)
    assert done.returncode == code
    line = one_error_line(done)
    assert line.startswith("error: configuration: ") and words in line


def test_kafka_unreachable_is_one_line_and_exit_69(tmp_path: Path) -> None:
    env = clean_env(tmp_path) | {
        "INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "INBOXSTREAM_KAFKA__REQUEST_TIMEOUT_MS": "2000",
    }
    done = run(["topics", "create"], env, tmp_path)
    assert done.returncode == EX_UNAVAILABLE
    assert "Kafka is unavailable" in one_error_line(done)


def test_schema_registry_unreachable_is_one_line_and_exit_69(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    env = clean_env(tmp_path) | {
        "INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "INBOXSTREAM_KAFKA__SCHEMA_REGISTRY_URL": "http://127.0.0.1:1/apis/ccompat/v7",
        "INBOXSTREAM_TOPICS": TopicSettings()
        .with_prefix(f"noreg{tmp_path.name[-8:]}.")
        .model_dump_json(),
    }
    done = run(["topics", "create"], env, tmp_path)
    assert done.returncode == EX_UNAVAILABLE
    line = one_error_line(done)
    assert "schema registry" in line and "infra start schema_registry" in line


def test_bad_input_is_one_line_and_exit_65(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    done = run(["query", "SELEC 1"], env, tmp_path)
    assert done.returncode == EX_DATAERR
    assert "refused" in one_error_line(done)
    not_mbox = tmp_path / "passwd"
    not_mbox.write_text("root:x:0:0:root:/root:/bin/bash\n")
    done = run(["thread", str(not_mbox)], env, tmp_path)
    assert done.returncode == EX_DATAERR and done.stdout == ""
    assert "is not an mbox file" in one_error_line(done)
    empty = tmp_path / "empty.mbox"
    empty.write_text("")
    done = run(["thread", str(empty)], env, tmp_path)  # an empty mbox is an mbox
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_version(tmp_path: Path) -> None:
    done = run(["--version"], clean_env(tmp_path), tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("inboxstream, version ")


async def test_process_stops_cleanly_on_sigterm_and_leaves_its_group(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    group = f"sigterm-{unique}"
    proc = subprocess.Popen(
        [CLI, "process", "--group-id", group],
        env=service_env(settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:

        async def members() -> list[object]:
            # a fresh broker's group coordinator may not be up yet: ask again
            deadline = time.monotonic() + 60
            while True:
                try:
                    [described] = await admin.describe_consumer_groups([group])
                    return list(described.groups[0][5]) if described.groups else []
                except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        deadline = time.monotonic() + 90
        while not await members():  # until the instance holds its partitions
            assert time.monotonic() < deadline, "the processor never joined its group"
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        assert '"records"' in err and "Traceback" not in err  # its clean-stop summary
        assert not await members()  # it left: no member waits out a session timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        await admin.close()


async def test_sync_logs_json_with_inbox_fields_and_inbox_status_prints_json(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    import json

    await asyncio.to_thread(deliver_many, mail_user.name, 1)
    inbox = mail_user.inbox().model_dump(mode="json") | {"password": mail_user.password}
    env = service_env(settings) | {"INBOXSTREAM_INBOXES": json.dumps([inbox])}
    done = await asyncio.to_thread(
        run, ["--log-format", "json", "--log-level", "INFO", "sync"], env, tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert logged and all({"time", "level", "logger", "message"} <= set(o) for o in logged)
    ours = [o for o in logged if o.get("inbox") == mail_user.name]
    assert any(o.get("folder") == "INBOX" for o in ours), logged[-5:]
    assert mail_user.password not in done.stderr + done.stdout

    shown = await asyncio.to_thread(run, ["inbox", "status", "--json"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    document = json.loads(shown.stdout)
    [mine] = [i for i in document["inboxes"] if i["inbox"] == mail_user.name]
    assert (mine["state"], mine["reason"]) == ("disconnected", "one-shot sync finished")
    assert mine["producer"] and mine["server"]
    assert isinstance(document["folders"], list)  # one-shot sync keeps no checkpoints

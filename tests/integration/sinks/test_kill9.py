"""``inboxstream sink run`` as its own process: SIGKILL it in the middle of the stream, start
it again, and the table holds exactly the source (nothing lost, nothing counted twice). While
it runs it owns the chDB path, and `inboxstream analytics` / `query` still work through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inboxstream.core.settings import Settings
from inboxstream.sinks.endpoint import EndpointInfo, RemoteEmbeddedClickHouse
from tests.helpers import events as ev

INBOXSTREAM = str(Path(sys.executable).parent / "inboxstream")
N = 30_000


def _config(settings: Settings, path: Path) -> Path:
    """A TOML config for the subprocess: this test's topics, group and its own chDB path."""
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{settings.kafka.bootstrap_servers}"',
        "[clickhouse]",
        f'path = "{path / "chdb"}"',
        f'database = "{settings.clickhouse.database}"',
        "[sink]",
        f'group_id = "{settings.sink.group_id}"',
        "batch_size = 300",
        "batch_timeout_s = 0.2",
    ]
    for name, spec in settings.topics.model_dump().items():
        if isinstance(spec, dict):
            lines += [
                f"[topics.{name}]",
                f'name = "{spec["name"]}"',
                f"retention_ms = {spec['retention_ms']}",
                f"compacted = {str(spec['compacted']).lower()}",
            ]
    config = path / "inboxstream.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INBOXSTREAM_CONFIG=str(config), COLUMNS="200")
    return subprocess.run(
        [INBOXSTREAM, *args], env=env, text=True, capture_output=True, timeout=120, check=False
    )


def _start_sink(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, INBOXSTREAM_CONFIG=str(config))
    with log.open("ab") as out:
        return subprocess.Popen(
            [INBOXSTREAM, "--log-level", "INFO", "sink", "run"], env=env, stdout=out, stderr=out
        )


def _remote(path: Path, database: str, proc: subprocess.Popen[bytes]) -> RemoteEmbeddedClickHouse:
    """Wait until this sink process advertises its query endpoint."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sink exited early"
        info = EndpointInfo.read(path / "chdb")
        if info is not None and info.pid == proc.pid:
            return RemoteEmbeddedClickHouse(info, database)
        time.sleep(0.05)
    raise TimeoutError("the sink never served its query endpoint")


def _count(ch: RemoteEmbeddedClickHouse) -> int:
    rows = ch.query(f"SELECT count() AS n FROM {ch.database}.email_metadata")
    return int(rows[0]["n"])


async def test_kill_9_mid_stream_then_restart_counts_exactly(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    inbox = f"k-{unique}@example.test"
    day = ev.ago(days=1)
    sent = await ev.produce(
        settings,
        settings.topics.messages.name,
        (ev.message(inbox, u, received=day) for u in range(1, N + 1)),
    )
    assert sent == N
    config = _config(settings, tmp_path)
    log = tmp_path / "sink.log"
    db = settings.clickhouse.database

    first = _start_sink(config, log)
    try:
        remote = _remote(tmp_path, db, first)
        landed = 0
        while landed < N // 10:  # some batches in, most still to come
            landed = _count(remote)
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert landed < N, "the sink finished before it could be killed mid-stream"

    second = _start_sink(config, log)
    try:
        remote = _remote(tmp_path, db, second)
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and int(remote.query(f"SELECT count() AS n FROM {db}.email_metadata FINAL")[0]["n"]) < N
        ):
            time.sleep(0.2)
        # analytics and query, as separate processes, while the sink owns the path
        analytics = _cli(
            config, "analytics", "--format", "json", "--only", "messages_per_inbox_per_day"
        )
        assert analytics.returncode == 0, analytics.stderr
        rows = json.loads(analytics.stdout)["messages_per_inbox_per_day"]["rows"]
        assert [(r["inbox_id"], int(r["messages"])) for r in rows] == [(inbox, N)]
        table = _cli(config, "analytics", "--only", "top_sender_domains")
        assert table.returncode == 0 and "acme.example" in table.stdout, table.stderr
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert second.returncode == 0, log.read_text()[-3000:]
    assert not (tmp_path / "chdb" / "sink-endpoint.json").exists()

    # The path is free again: read it directly, as the only process.
    final = _cli(
        config,
        "query",
        "--format",
        "json",
        f"SELECT count() AS n, uniqExact(event_id) AS ids, uniqExact(uid) AS uids "
        f"FROM {db}.email_metadata FINAL",
    )
    assert final.returncode == 0, final.stderr
    got = {k: int(v) for k, v in json.loads(final.stdout).items()}
    assert got == {"n": N, "ids": N, "uids": N}

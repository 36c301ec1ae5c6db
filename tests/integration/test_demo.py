"""The README's demo command, run for real: it prints rows read back from ClickHouse, and a
second run works, reinstalls nothing and counts the same messages (idempotent re-sync)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra import dovecot
from runtime.mailgen import generate_mailbox

INBOXSTREAM = str(Path(sys.executable).parent / "inboxstream")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INBOXSTREAM, *args], env=env, text=True, capture_output=True, timeout=300, check=False
    )


def test_demo_prints_rows_and_reruns_idempotently(
    kafka_bootstrap: str, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    user = f"demo-{unique}@inboxstream.test"
    env = dict(
        os.environ,
        INBOXSTREAM_CLICKHOUSE__PATH=str(tmp_path / "chdb"),
        INBOXSTREAM_SINK__GROUP_ID=f"demo-{unique}",
        COLUMNS="200",
    )
    expected = list(generate_mailbox(user, threads=6))
    inbox_count = sum(1 for m in expected if m.folder == "INBOX")
    try:
        first = _run(["demo", "--threads", "6", "--user", user], env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"filled {user}" in first.stderr
        assert "Messages per folder" in first.stdout
        assert "Top sender domains" in first.stdout
        # the INBOX row of the first table, read back from ClickHouse
        assert any(
            line.split("│")[1:4] == [" INBOX  ", " inbox       ", f" {inbox_count:<8} "]
            for line in first.stdout.splitlines()
            if line.count("│") >= 4
        ), first.stdout

        second = _run(["demo", "--threads", "6", "--user", user], env)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "already has mail" in second.stderr
        assert "kafka: already running" in second.stderr

        rows = _run(
            [
                "query",
                "--format",
                "json",
                f"SELECT folder, count() AS n FROM inboxstream.email_metadata FINAL "
                f"WHERE inbox_id = '{user}' GROUP BY folder ORDER BY folder",
            ],
            env,
        )
        assert rows.returncode == 0, rows.stderr[-3000:]
        counts = _folder_counts(rows.stdout)
        assert counts == {
            "INBOX": inbox_count,
            "Sent": sum(1 for m in expected if m.folder == "Sent"),
        }
    finally:
        dovecot.remove_user(user)


def _folder_counts(text: str) -> dict[str, int]:
    """``query --format json`` prints one pretty JSON object per row."""
    decoder = json.JSONDecoder()
    out: dict[str, int] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out[obj["folder"]] = int(obj["n"])
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out

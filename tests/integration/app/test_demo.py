"""The README's demo command, run for real: it prints rows read back from ClickHouse, and a
second run works, reinstalls nothing and counts the same messages (idempotent re-sync).
Replies to the mail the CRM sent become engagements, through the exactly-once processor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.infra import dovecot

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
        args = ["demo", "--threads", "6", "--user", user, "--processor-group", f"proc-{unique}"]
        first = _run(args, env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"filled {user}" in first.stderr
        assert "Messages per folder" in first.stdout
        assert "Top sender domains" in first.stdout
        assert "Reply rate and median reply time to CRM mail" in first.stdout
        # the INBOX row of the first table, read back from ClickHouse
        assert any(
            line.split("│")[1:4] == [" INBOX  ", " inbox       ", f" {inbox_count:<8} "]
            for line in first.stdout.splitlines()
            if line.count("│") >= 4
        ), first.stdout

        second = _run(args, env)
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
        # Engagements: exactly the incoming replies in conversations the CRM started, each
        # once after two runs; the owner's own follow-ups in Sent are not engagements.
        crm_threads = {
            m.thread
            for m in expected
            if m.folder == "Sent" and m.message_id and ".m0." in m.message_id
        }
        replies = {
            m.message_id for m in expected if m.thread in crm_threads and m.folder == "INBOX"
        }
        assert replies, "the generated mailbox should hold replies to CRM mail"
        engaged = _run(
            [
                "query",
                "--format",
                "json",
                f"SELECT message_id AS folder, count() AS n "
                f"FROM inboxstream.engagements_current WHERE inbox_id = '{user}' "
                f"GROUP BY message_id",
            ],
            env,
        )
        assert engaged.returncode == 0, engaged.stderr[-3000:]
        assert _folder_counts(engaged.stdout) == dict.fromkeys(replies, 1)
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

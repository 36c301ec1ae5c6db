"""Gmail's labels are folders: one message shows up in INBOX, in each label's folder and in the
virtual All Mail, Starred and Important. Against a server with X-GM-EXT-1, every copy is the
same message (X-GM-MSGID), with the folders it is in (X-GM-LABELS): one event identity, one
row in ClickHouse, no copies from the virtual folders."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from inboxstream.app.pipeline import open_clickhouse, run_sink, sync_inbox_once
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.infra import dovecot
from inboxstream.schemas.models import MessageEvent
from tests.helpers.gmail_server import GmailServer, gmail_message
from tests.helpers.service import TopicReader

USER = "pat@gmail.example"
# recent, or the tables' 60-day TTL would drop the rows
WHEN = datetime.now(UTC) - timedelta(days=1)
DATE = WHEN.strftime("%d-%b-%Y %H:%M:%S +0000")


def mail(n: int, subject: str) -> str:
    return (
        f"From: Ann <ann@acme.example>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <m{n}@acme.example>\r\nDate: {format_datetime(WHEN)}\r\n\r\n"
        f"body {n}\r\n"
    )


A = gmail_message(mail(1, "pilot"), "1278455344230334101", ["\\Inbox", "Work", "\\Important"], DATE)
B = gmail_message(mail(2, "re: pilot"), "1278455344230334102", ["\\Sent", "Work"], DATE)
C = gmail_message(mail(3, "lunch"), "1278455344230334103", ["\\Inbox", "\\Starred"], DATE)
STORAGE = {
    "INBOX": {"messages": [A, C]},
    "": {
        "separator": "/",
        "folders": {
            "[Gmail]": {
                "flags": ["\\Noselect"],
                "folders": {
                    "All Mail": {"special-use": "\\All", "messages": [A, B, C]},
                    "Sent Mail": {"special-use": "\\Sent", "messages": [B]},
                    "Starred": {"special-use": "\\Flagged", "messages": [C]},
                    "Important": {"special-use": "\\Important", "messages": [A]},
                },
            },
            "Work": {"messages": [A, B]},
        },
    },
}


@pytest.fixture
def gmail(dovecot_server: dovecot.DovecotEndpoints, tmp_path: Path) -> Iterator[InboxSettings]:
    server = GmailServer(tmp_path, USER, "app-password", STORAGE)
    try:
        yield InboxSettings(
            id=USER,
            imap_host="127.0.0.1",
            imap_port=server.port,
            username=USER,
            password="app-password",
            ca_file=dovecot_server.ca_cert,
        )
    finally:
        server.stop()


async def test_each_message_once_with_its_labels(settings: Settings, gmail: InboxSettings) -> None:
    report = await sync_inbox_once(settings, gmail)
    assert set(report.folders) == {"INBOX", "[Gmail]/Sent Mail", "Work"}  # no virtual folder

    reader = TopicReader(settings, settings.topics.messages.name, MessageEvent)
    try:
        events: list[MessageEvent] = await reader.read_to_end()
    finally:
        await reader.close()
    new = [e for e in events if e.event_type == "message.new"]
    # A is in INBOX and Work, B in Sent Mail and Work, C in INBOX: five copies, three messages
    assert sorted(e.folder for e in new) == [
        "INBOX",
        "INBOX",
        "Work",
        "Work",
        "[Gmail]/Sent Mail",
    ]
    by_message: dict[str, set[str]] = {}
    for e in new:
        by_message.setdefault(e.message_id, set()).add(e.event_id)
        assert e.gm_msgid is not None
    assert all(len(ids) == 1 for ids in by_message.values()), by_message  # one identity each
    pilot = [e for e in new if e.subject == "pilot"]
    assert {tuple(e.gm_labels) for e in pilot} == {("\\Inbox", "Work", "\\Important")}
    assert {e.folder_role for e in pilot} == {"inbox"}  # the labels decide, not the folder
    assert {e.folder_role for e in new if e.subject == "re: pilot"} == {"sent"}

    ch = open_clickhouse(settings)
    try:
        await run_sink(settings, ch, until_caught_up=True, purge_every_s=None)
        db = settings.clickhouse.database
        rows = ch.query(
            f"SELECT message_id, folder_role FROM {db}.email_metadata FINAL "
            "WHERE event_type = 'message.new' ORDER BY message_id"
        )
    finally:
        ch.close()
    assert [(r["message_id"], r["folder_role"]) for r in rows] == [
        ("m1@acme.example", "inbox"),
        ("m2@acme.example", "sent"),
        ("m3@acme.example", "inbox"),
    ]

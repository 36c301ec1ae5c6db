"""One message travels the whole way: Dovecot → IMAP over TLS → Kafka (Avro) → sink →
ClickHouse, on the real services."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from inboxstream.app.pipeline import open_clickhouse, run_sink, sync_inbox_once
from inboxstream.core.kafka import DLQ_PREFIX, make_consumer, make_producer
from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.schemas.models import BodyEvent, MessageEvent, StatusEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.pipeline import read_all
from tests.helpers.services import MailUser


def _mail(subject: str, mid: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Grace Hopper <grace@navy.example>"
    msg["To"] = "someone@inboxstream.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{mid}>"
    msg["Date"] = format_datetime(datetime(2026, 11, 20, 9, 30, tzinfo=UTC))
    msg.set_content("The body stays out of the metadata table.")
    msg.add_attachment(b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename="spec.pdf")
    return msg.as_bytes()


async def _read_all(settings: Settings, topic: str, expect: int) -> list:  # type: ignore[type-arg]
    consumer = make_consumer(settings.kafka, topic, group_id=None)
    await consumer.start()
    records = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def test_one_message_end_to_end(settings: Settings, mail_user: MailUser) -> None:
    dovecot.deliver(mail_user.name, _mail("Quarterly numbers", "q1@navy.example"))

    report = await sync_inbox_once(settings, mail_user.inbox())
    assert report.folders["INBOX"].published == 1
    assert report.published == 1  # the special-use folders exist but are empty

    # In Kafka: Avro with the schema fingerprint header, keyed by inbox id.
    records = await _read_all(settings, settings.topics.messages.name, 1)
    assert len(records) == 1
    record = records[0]
    assert record.key == mail_user.name.encode()
    event = serde_for(MessageEvent).decode(record.value, record.headers)
    assert event.message_id == "q1@navy.example"
    assert event.folder_role == "inbox" and event.has_attachments
    bodies = await _read_all(settings, settings.topics.bodies.name, 1)
    body = serde_for(BodyEvent).decode(bodies[0].value, bodies[0].headers)
    assert body.event_id == event.event_id
    assert body.attachments[0].filename == "spec.pdf"

    # In ClickHouse, through the sink.
    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=60)
    # one metadata row and, since the sink projects every topic, one body row, and the
    # status events of the sync
    tables = dict(sink.stats.inserted_by_table)
    assert tables.pop("inbox_status") >= 3
    assert tables == {"email_metadata": 1, "bodies": 1}
    # the one-shot sync says what it did on inbox.status, as the service does
    statuses = await read_all(settings, settings.topics.status.name, StatusEvent)
    assert statuses[0].state == "connected"
    assert any(e.state == "idle" and e.folder == "INBOX" for e in statuses)
    assert (statuses[-1].state, statuses[-1].reason) == ("disconnected", "one-shot sync finished")
    assert all(e.producer for e in statuses)
    rows = ch.query(
        f"SELECT message_id, subject, from_email, from_domain, folder_role, has_attachments "
        f"FROM {ch.database}.email_metadata FINAL"
    )
    assert rows == [
        {
            "message_id": "q1@navy.example",
            "subject": "Quarterly numbers",
            "from_email": "grace@navy.example",
            "from_domain": "navy.example",
            "folder_role": "inbox",
            "has_attachments": True,
        }
    ]


async def test_resync_is_idempotent_in_clickhouse(settings: Settings, mail_user: MailUser) -> None:
    dovecot.deliver(mail_user.name, _mail("first", "a@x.example"))
    dovecot.deliver(mail_user.name, _mail("second", "b@x.example"))
    await sync_inbox_once(settings, mail_user.inbox())
    await sync_inbox_once(settings, mail_user.inbox())  # same events again, same event ids
    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=60)
    assert (
        sink.stats.inserted_by_table["email_metadata"] == 4
    )  # at-least-once delivery really did insert twice ...
    rows = ch.query(f"SELECT count() AS n FROM {ch.database}.email_metadata FINAL")
    assert rows == [{"n": 2}]  # ... and the table still counts each message once


async def test_poison_record_goes_to_dead_letter_and_batch_goes_on(
    settings: Settings, mail_user: MailUser
) -> None:
    dovecot.deliver(mail_user.name, _mail("good", "good@x.example"))
    await sync_inbox_once(settings, mail_user.inbox())
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.messages.name,
            value=b"\x00not avro at all",
            key=mail_user.name.encode(),
            headers=[("trace", b"t-1")],
        )
    finally:
        await producer.stop()
    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=60)
    assert sink.stats.dead_lettered == 1
    assert sink.stats.inserted_by_table["email_metadata"] == 1
    assert ch.query(f"SELECT count() AS n FROM {ch.database}.email_metadata FINAL") == [{"n": 1}]

    dead = await _read_all(settings, settings.topics.dead_letter.name, 1)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert dead[0].value == b"\x00not avro at all" and dead[0].key == mail_user.name.encode()
    assert headers["trace"] == b"t-1"  # original headers kept
    assert headers[DLQ_PREFIX + "topic"] == settings.topics.messages.name.encode()
    assert headers[DLQ_PREFIX + "stage"] == b"sink"
    assert headers[DLQ_PREFIX + "exception.class.name"] == b"DecodeError"

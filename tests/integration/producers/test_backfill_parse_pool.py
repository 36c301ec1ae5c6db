"""A backfill through parse worker processes puts into the real Kafka exactly what an inline
backfill would: every UID once on both topics, same contents, checkpoints only past acks."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import Settings
from inboxstream.imap.connection import ImapConnection, SelectedFolder, endpoint_for_inbox
from inboxstream.infra import dovecot
from inboxstream.producers.folder_sync import sync_folder
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.producers.parse_pool import ParsePool
from inboxstream.producers.publish import EventPublisher
from inboxstream.schemas.models import BodyEvent, Event, MessageEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.services import MailUser

N = 300
MALFORMED = b"Subject: =?utf-8?q?broken\r\nContent-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\n"


async def _read_all(settings: Settings, topic: str, model: type[Event], n: int) -> list[Any]:
    consumer = make_consumer(settings.kafka, topic, group_id=None)
    await consumer.start()
    serde = serde_for(model)
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        idle = 0
        while loop.time() < deadline and idle < 3:  # until 1.5 s of silence after n records
            batch = await consumer.getmany(timeout_ms=500, max_records=1_000)
            records = [r for part in batch.values() for r in part]
            idle = 0 if records else idle + (len(out) >= n)
            out += [serde.decode(r.value, r.headers) for r in records]
    finally:
        await consumer.stop()
    return out


async def test_backfill_through_worker_processes_is_exact(
    settings: Settings, mail_user: MailUser
) -> None:
    raws = [m.raw for m in itertools.islice(generate_mailbox(mail_user.name, threads=N), N)]
    raws[7] = MALFORMED
    assert dovecot.fill_maildir(mail_user.name, iter(raws)) == N

    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    pool = ParsePool(2)
    conn = await ImapConnection.open(
        endpoint_for_inbox(mail_user.inbox()), mail_user.name, mail_user.password
    )
    checkpoints: list[int] = []

    async def on_acked(selected: SelectedFolder, last_uid: int) -> None:
        checkpoints.append(last_uid)

    try:
        result = await sync_folder(
            conn,
            EventPublisher(producer, settings.topics, pool),
            inbox_id=mail_user.name,
            folder="INBOX",
            role="inbox",
            batch_size=40,
            producer_name="pooltest",
            on_acked=on_acked,
        )
        uidvalidity = result.folder.uidvalidity
    finally:
        await conn.logout()
        await producer.stop()
        pool.close()

    assert result.published == N and result.last_uid == N
    # one checkpoint per batch, in order, each after its batch's acks (sync_folder awaits them)
    assert checkpoints == [*range(40, N, 40), N]

    messages = await _read_all(settings, settings.topics.messages.name, MessageEvent, N)
    bodies = await _read_all(settings, settings.topics.bodies.name, BodyEvent, N)
    assert sorted(m.uid for m in messages) == list(range(1, N + 1))
    assert sorted(b.uid for b in bodies) == list(range(1, N + 1))
    by_uid = {m.uid: m for m in messages}
    bodies_by_uid = {b.uid: b for b in bodies}
    assert by_uid[8].parse_error and by_uid[8].message_id_synthetic
    # the same contents an inline parse of the same bytes gives (up to observed_at and the
    # server's flags/dates, which only the FETCH knows)
    for uid in (1, 8, 150, N):
        served = raws[uid - 1].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as IMAP sends
        want_m, want_b = parse_message(
            FetchedMessage(mail_user.name, "INBOX", "inbox", uidvalidity, uid, served),
            producer="pooltest",
        )
        skip = {"observed_at", "internal_date", "flags", "modseq", "size"}
        assert by_uid[uid].model_dump(exclude=skip) == want_m.model_dump(exclude=skip)
        assert bodies_by_uid[uid].model_dump(exclude=skip) == want_b.model_dump(exclude=skip)

"""A 10,000-message folder is backfilled into the real Kafka with flat memory, exactly once.

The folder is written straight into Dovecot's Maildir (infra.dovecot.fill_maildir) from a pool
of generated messages, each copy with its own Message-ID, so filling takes seconds. The RSS
growth between the first 1,000 messages and the end must stay far below the folder's size: a
backfill that kept messages, events or unacknowledged sends around would grow with it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import psutil

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import Settings
from inboxstream.imap.connection import ImapConnection, endpoint_for_inbox
from inboxstream.imap.fetch import BACKFILL_BATCH
from inboxstream.infra import dovecot
from inboxstream.producers.folder_sync import FolderProgress, sync_folder
from inboxstream.producers.publish import EventPublisher
from inboxstream.schemas.models import MessageEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.services import MailUser

N = 10_000


def _mails(owner: str, n: int, pool: int = 1_000) -> Iterator[bytes]:
    base = [m.raw for m in itertools.islice(generate_mailbox(owner, threads=pool), pool)]
    for i in range(n):
        raw = base[i % pool]
        yield raw.replace(b"Message-ID: <", f"Message-ID: <c{i // pool}.".encode(), 1)


class RssSampler:
    """Peak RSS of this process, sampled from a thread every 20 ms."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def reset(self) -> int:
        now = int(self.proc.memory_info().rss)
        self.peak = now
        return now


async def test_ten_thousand_messages_flat_memory_exactly_once(
    settings: Settings, mail_user: MailUser
) -> None:
    folder_bytes = sum(len(m) for m in _mails(mail_user.name, N))
    assert dovecot.fill_maildir(mail_user.name, _mails(mail_user.name, N)) == N

    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    conn = await ImapConnection.open(
        endpoint_for_inbox(mail_user.inbox()), mail_user.name, mail_user.password
    )
    sampler = RssSampler()
    sampler.thread.start()
    marks: dict[str, int] = {}
    progress: list[FolderProgress] = []

    def on_progress(p: FolderProgress) -> None:
        progress.append(p)
        if "first_1000" not in marks and p.done >= 1_000:
            marks["first_1000"] = sampler.reset()  # the peak from here on is what counts

    try:
        result = await sync_folder(
            conn,
            EventPublisher(producer, settings.topics),
            inbox_id=mail_user.name,
            folder="INBOX",
            role="inbox",
            batch_size=BACKFILL_BATCH,
            on_progress=on_progress,
        )
        await producer.flush()
    finally:
        sampler.stop.set()
        sampler.thread.join()
        await conn.logout()
        await producer.stop()

    assert result.published == N and result.last_uid == N
    assert progress[-1].done == N and progress[-1].total == N
    growth = sampler.peak - marks["first_1000"]
    # Holding the folder would cost at least its size (51 MB) plus the events; a bounded
    # backfill holds at most three batches (fetch, parse and publish stages, ~2.5 MB raw
    # each) and the producer's in-flight buffers.
    assert growth < folder_bytes * 0.2, (
        f"RSS grew {growth / 1e6:.1f} MB after the first 1,000 messages "
        f"for a {folder_bytes / 1e6:.1f} MB folder"
    )

    # Exactly N message events in Kafka: one per UID, none twice.
    consumer = make_consumer(settings.kafka, settings.topics.messages.name, group_id=None)
    await consumer.start()
    serde = serde_for(MessageEvent)
    uids: list[int] = []
    ids: set[str] = set()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        idle_polls = 0
        while loop.time() < deadline and idle_polls < 4:  # read until 2 s of silence
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            records = [r for part in batch.values() for r in part]
            idle_polls = 0 if records else idle_polls + (len(uids) >= N)
            for record in records:
                event = serde.decode(record.value, record.headers)
                assert event.inbox_id == mail_user.name and event.folder == "INBOX"
                uids.append(event.uid)
                ids.add(event.event_id)
    finally:
        await consumer.stop()
    assert len(uids) == N
    assert sorted(uids) == list(range(1, N + 1))
    assert len(ids) == N

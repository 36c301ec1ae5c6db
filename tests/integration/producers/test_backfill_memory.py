"""A 20,000-message folder is backfilled into the real Kafka with flat memory, exactly once.

The folder is written straight into Dovecot's Maildir (infra.dovecot.fill_maildir) from a pool
of generated messages, each copy with its own Message-ID, so filling takes seconds. The RSS
growth over the second half of the folder must stay far below that half's size: a backfill
that kept messages, events or unacknowledged sends around would grow with it. The first half
is warm-up: a fresh process grows while its bounded caches fill, then stays flat. Measured
2026-12-07 over 40,000 messages: 86 MB at 500, 97 at 10,500, 99 from 20,500 to the end (0.5
MB over the last 20,000). With 10,000 messages the second half was still warming up (3.2-5.1
MB against a limit of 5.06: a CI run failed on it), so the folder is 20,000. The backfill
runs in a child process (tests/helpers/backfill_child.py) so that the growth is its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.core.kafka import ensure_topics, make_consumer
from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.schemas.models import MessageEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.services import MailUser

N = 20_000
REPO = Path(__file__).resolve().parents[3]


def _mails(owner: str, n: int, pool: int = 1_000) -> Iterator[bytes]:
    base = [m.raw for m in itertools.islice(generate_mailbox(owner, threads=pool), pool)]
    for i in range(n):
        raw = base[i % pool]
        yield raw.replace(b"Message-ID: <", f"Message-ID: <c{i // pool}.".encode(), 1)


async def test_twenty_thousand_messages_flat_memory_exactly_once(
    settings: Settings, mail_user: MailUser
) -> None:
    folder_bytes = sum(len(m) for m in _mails(mail_user.name, N))
    assert dovecot.fill_maildir(mail_user.name, _mails(mail_user.name, N)) == N
    await ensure_topics(settings.kafka, settings.topics)

    # The backfill runs in a process of its own: its RSS is then the backfill's alone, not
    # this pytest process's heap shaped by whichever tests ran before (which made the same
    # code pass alone and fail after some orders of tests).
    job = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "topics": settings.topics.model_dump(mode="json"),
        "user": mail_user.name,
        "password": mail_user.password,
        "mark": N // 2,
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.backfill_child",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(json.dumps(job).encode()), timeout=300)
    assert child.returncode == 0, f"backfill child exited {child.returncode}"
    result = json.loads(out.decode().strip().splitlines()[-1])

    assert result["published"] == N and result["last_uid"] == N
    assert result["progress_done"] == N and result["progress_total"] == N
    growth = result["rss_growth_bytes"]
    half_bytes = folder_bytes / 2
    # Holding the second half would cost at least its size (50 MB) plus the events; a bounded
    # backfill holds at most four batches (fetch, parse and publish stages, ~2.5 MB raw each)
    # and the producer's in-flight buffers, all allocated by the first half already.
    assert growth < half_bytes * 0.2, (
        f"RSS grew {growth / 1e6:.1f} MB over the second {half_bytes / 1e6:.1f} MB "
        f"of the folder; RSS (MB) by messages done: {result['rss_mb_by_done']}"
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

"""Backfill one Dovecot folder into Kafka in a process of its own, and report its RSS.

``test_backfill_memory`` runs this as ``python -m tests.helpers.backfill_child``: the RSS growth
it bounds is then the backfill's alone, not whatever earlier tests left in (or freed from) the
pytest process's heap. The job arrives as one JSON object on stdin (so the password never shows
in ``ps``); the result is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

import psutil

from inboxstream.app.demo import demo_inbox
from inboxstream.core.kafka import make_producer
from inboxstream.core.settings import KafkaSettings, TopicSettings, load_settings
from inboxstream.imap.connection import ImapConnection, endpoint_for_inbox
from inboxstream.imap.fetch import BACKFILL_BATCH
from inboxstream.producers.folder_sync import FolderProgress, sync_folder
from inboxstream.producers.publish import EventPublisher

#: The peak RSS counts from the job's ``mark`` (a count of messages done) on. Start-up, the first
#: batches and the parser's bounded caches (3 x 4,096 entries of header values) fill before it.


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


async def backfill(job: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings(
        kafka=KafkaSettings(bootstrap_servers=job["bootstrap_servers"]),
        topics=TopicSettings.model_validate(job["topics"]),
    )
    producer = make_producer(settings.kafka)
    await producer.start()
    inbox = demo_inbox(job["password"], job["user"])
    conn = await ImapConnection.open(endpoint_for_inbox(inbox), job["user"], job["password"])
    sampler = RssSampler()
    sampler.thread.start()
    marks: dict[str, int] = {}
    progress: list[FolderProgress] = []
    trace: list[tuple[int, int]] = []

    def on_progress(p: FolderProgress) -> None:
        progress.append(p)
        trace.append((p.done, sampler.proc.memory_info().rss // 1_000_000))
        if "mark" not in marks and p.done >= job["mark"]:
            marks["mark"] = sampler.reset()

    try:
        result = await sync_folder(
            conn,
            EventPublisher(producer, settings.topics),
            inbox_id=job["user"],
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
    return {
        "published": result.published,
        "last_uid": result.last_uid,
        "progress_done": progress[-1].done,
        "progress_total": progress[-1].total,
        "rss_growth_bytes": sampler.peak - marks["mark"],
        "rss_mb_by_done": trace,
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(backfill(job))), flush=True)


if __name__ == "__main__":
    main()

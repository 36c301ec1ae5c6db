"""kill -9 in the middle of a backfill, then restart: nothing lost, nothing duplicated beyond
the idempotency key, and the restart resumed from the checkpoint instead of starting over.

The service runs as ``inboxstream producer run`` in a subprocess, exactly as deployed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil

from inboxstream.core.settings import Settings
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import CheckpointEvent, MessageEvent, StatusEvent
from tests.helpers.service import (
    checkpoint_reader,
    deliver_many,
    fast_settings,
    new_messages,
    readers,
    start_producer,
)
from tests.helpers.services import MailUser

FOLDER_SIZE = 3000


async def test_kill_9_mid_backfill_then_restart_loses_and_duplicates_nothing(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    await asyncio.to_thread(deliver_many, mail_user.name, FOLDER_SIZE)
    s = fast_settings(settings, tmp_path / "inboxes", batch_size=50)
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    log = tmp_path / "service.log"
    cps = checkpoint_reader(s)
    async with readers(s) as (messages, status):
        first = start_producer(s, log)
        try:
            at_kill = await messages.wait_for(
                lambda ev: len(new_messages(ev, "INBOX")) >= 600,
                timeout=120,
                what="a fifth of the folder in Kafka",
            )
            # Its helpers: the parse workers (two by default), their forkserver and the like.
            helpers = psutil.Process(first.pid).children(recursive=True)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(30)
        assert first.returncode == -signal.SIGKILL
        assert len(helpers) >= s.producer.parse_workers >= 2
        # Nothing outlives the killed producer: every helper is gone within seconds.
        _, alive = psutil.wait_procs(helpers, timeout=10)
        assert not alive, f"orphans left behind: {[(p.pid, p.cmdline()) for p in alive]}"
        await asyncio.sleep(1)  # let every acked record become visible
        seen_at_kill = {e.uid for e in new_messages(await messages.read_to_end(), "INBOX")}
        assert len(at_kill) and len(seen_at_kill) < FOLDER_SIZE, "killed too late"
        checkpoints: list[CheckpointEvent] = await cps.wait_for(
            lambda ev: any(c.folder == "INBOX" for c in ev), what="an INBOX checkpoint"
        )
        resume_from = max(c.last_uid for c in checkpoints if c.folder == "INBOX")
        assert 0 < resume_from < FOLDER_SIZE
        # A checkpoint never runs ahead of Kafka: everything up to it was published.
        assert set(range(1, resume_from + 1)) <= seen_at_kill
        statuses_before = len(await status.read_to_end())

        second = start_producer(s, log)
        try:
            await status.wait_for(
                lambda ev: any(
                    e.state == "idle" and e.folder == "INBOX" for e in ev[statuses_before:]
                ),
                timeout=120,
                what="INBOX caught up after the restart",
            )
            events: list[MessageEvent] = new_messages(await messages.read_to_end(), "INBOX")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        assert second.returncode == 0, log.read_text()[-3000:]
        written: list[CheckpointEvent] = await cps.read_to_end()
    await cps.close()
    inbox_cps = [c for c in written if c.folder == "INBOX"]
    assert inbox_cps[-1].last_uid == FOLDER_SIZE
    # Two processes wrote them: the second took the inbox over from the topic alone.
    assert len({c.owner for c in inbox_cps}) == 2
    assert [c.last_uid for c in inbox_cps] == sorted(c.last_uid for c in inbox_cps)

    assert {e.uid for e in events} == set(range(1, FOLDER_SIZE + 1)), "a message is missing"
    assert len({e.event_id for e in events}) == FOLDER_SIZE
    assert len({e.uidvalidity for e in events}) == 1
    # Duplicates only where allowed: UIDs above the checkpoint may have been re-sent after the
    # kill (same event_id); UIDs at or below it were published exactly once.
    below = [e for e in events if e.uid <= resume_from]
    assert len(below) == resume_from
    assert len(events) - FOLDER_SIZE <= len(seen_at_kill) - resume_from
    final: list[StatusEvent] = await status_final(s)
    assert final[-1].state == "disconnected"  # the clean stop says so


async def status_final(s: Settings) -> list[StatusEvent]:
    async with readers(s) as (_, status):
        events: list[StatusEvent] = await status.read_to_end()
        return events

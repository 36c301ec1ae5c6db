"""Zombie fencing for real: an instance frozen (SIGSTOP) with a transaction open loses its
partitions when its session times out; another instance takes them over and processes
everything; the frozen one, resumed (SIGCONT), is fenced and commits nothing. The committed
output equals an uninterrupted run's, event for event."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.processors.topology import ProcessorTopics
from tests.helpers.pipeline import (
    count_uncommitted,
    final_stats,
    group_offsets,
    group_state,
    load_inputs,
    outputs,
    run_cli,
    wait_inside_a_transaction,
    write_config,
)

# The broker's floor (group.min.session.timeout.ms); a frozen instance is expelled after it.
SESSION_TIMEOUT_MS = 6_000


async def test_frozen_instance_is_fenced_and_commits_nothing(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    await load_inputs(settings, unique, inboxes=2)
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref", max_records=40)
    await run_processor(settings, reference, until_end=True)
    ref_threads, ref_engagements = await outputs(settings, "ref")
    assert sum(ref_threads.values()) >= 2 * 12 * 5
    assert sum(ref_engagements.values()) == 2 * 4 * 4

    config = write_config(settings, tmp_path / "config.toml")
    group_id = f"zombie-{unique}"
    group = ["--group-id", group_id, "--max-records", "40"]
    group += ["--session-timeout-ms", str(SESSION_TIMEOUT_MS)]
    # the pause gives us time to freeze A inside the transaction, after its outputs were sent
    zombie = run_cli(
        config, *group, "--instance-id", "a", "--pause-in-transaction", "2", "--until-idle", "3"
    )
    assert zombie.stderr is not None
    try:
        wait_inside_a_transaction(zombie, after=2, timeout=60, what="freeze")
        os.kill(zombie.pid, signal.SIGSTOP)

        topics = ProcessorTopics.build(settings.topics)
        partial_threads, _ = await outputs(settings, "", settle_s=0)
        open_txn = await count_uncommitted(settings, topics.threads)
        assert open_txn > sum(partial_threads.values())  # A's open transaction is in the log
        assert 0 < sum(partial_threads.values()) < sum(ref_threads.values())
        offsets_before = await group_offsets(settings, group_id)

        # A stops heartbeating: the group expels it after the session timeout
        deadline = time.monotonic() + 4 * SESSION_TIMEOUT_MS / 1000
        while (await group_state(settings, group_id))[1] != 0:
            assert time.monotonic() < deadline, "the frozen instance was never expelled"
            await asyncio.sleep(0.5)
        assert await group_offsets(settings, group_id) == offsets_before

        # B takes every partition over: starting its per-partition producers fences A's and
        # aborts A's open transaction; then it processes everything
        # (to the end of every input, its own repartitioned CRM records included: quiet for a
        # while is not done under load, and A would find work left)
        survivor = run_cli(config, *group, "--instance-id", "b", "--until-caught-up")
        _, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err[-3000:]
        assert final_stats(err).get("fenced", 0) == 0
        assert await outputs(settings, "") == (ref_threads, ref_engagements)
        offsets_after_b = await group_offsets(settings, group_id)
        assert offsets_after_b != offsets_before

        # A wakes up mid-transaction: fenced, it drops the partition and commits nothing
        os.kill(zombie.pid, signal.SIGCONT)
        reading = asyncio.ensure_future(asyncio.to_thread(zombie.stderr.read))
        try:
            await asyncio.wait_for(asyncio.to_thread(zombie.wait), 60)
        except TimeoutError:
            zombie.kill()
        zombie_err = await reading
        assert zombie.returncode == 0, zombie_err[-6000:]
    finally:
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGCONT)
            zombie.kill()
            zombie.wait(10)

    threads, engagements = await outputs(settings, "")
    assert threads == ref_threads  # each event exactly once: nothing missing, no duplicates
    assert engagements == ref_engagements
    # fenced, not failed: it dropped the partitions it met fenced (without a retry on a dead
    # producer), rejoined the group as a new member and found nothing left to do
    assert final_stats(zombie_err).get("fenced", 0) >= 1, zombie_err[-3000:]
    assert "aborted; restoring" not in zombie_err, zombie_err[-3000:]
    # and it processed nothing again: the records it held from before it froze were not
    # processed under its new assignment (they were, once, committing an offset below B's)
    assert final_stats(zombie_err).get("messages_duplicate", 0) == 0, zombie_err[-3000:]
    # the fencing logged once, as a warning; not again by asyncio for each failed send
    assert "never retrieved" not in zombie_err, zombie_err[-3000:]
    assert await group_offsets(settings, group_id) == offsets_after_b  # no offset from A

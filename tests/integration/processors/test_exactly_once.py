"""Exactly once for real: kill -9 a processor with a transaction open, restart it, and the
committed output equals an uninterrupted run's, event for event."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor, run_processor
from inboxstream.processors.topology import ProcessorTopics
from tests.helpers.pipeline import (
    count_uncommitted,
    load_inputs,
    outputs,
    run_cli,
    wait_inside_a_transaction,
    write_config,
)


async def test_kill_9_mid_batch_then_restart_equals_uninterrupted_run(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    await load_inputs(settings, unique)
    # reference: one uninterrupted run into its own output version and state
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref", max_records=50)
    await run_processor(settings, reference, until_end=True)
    ref_threads, ref_engagements = await outputs(settings, "ref")
    # every message assigned once; 3 inboxes x 4 CRM conversations x 4 replies matched
    assert sum(ref_threads.values()) >= 3 * 12 * 5
    assert sum(ref_engagements.values()) == 3 * 4 * 4
    assert max(ref_threads.values()) == 1 and max(ref_engagements.values()) == 1

    config = write_config(settings, tmp_path / "config.toml")
    group = ["--group-id", f"eos-{unique}", "--max-records", "50"]
    victim = run_cli(
        config,
        *group,
        "--instance-id",
        "a",
        "--pause-in-transaction",
        "0.5",
        "--engine-processes",
        "1",
    )
    wait_inside_a_transaction(victim, after=3, timeout=120, what="kill")
    engine = [
        child
        for child in psutil.Process(victim.pid).children()
        if "inboxstream.processors.engine_process" in child.cmdline()
    ]
    assert len(engine) == 1  # the record path runs in a process of its own
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    # and goes with its driver: its requests pipe closed
    _, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive

    topics = ProcessorTopics.build(settings.topics)
    partial_threads, _ = await outputs(settings, "", settle_s=0)
    # the killed transaction's records are in the log but not committed
    assert await count_uncommitted(settings, topics.threads) > sum(partial_threads.values())
    assert 0 < sum(partial_threads.values()) < sum(ref_threads.values())

    # another instance takes over: its per-partition producers fence the dead one's and abort
    # the transaction it left open
    survivor = run_cli(config, *group, "--instance-id", "b", "--until-idle", "4")
    _, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, err[-3000:]

    threads, engagements = await outputs(settings, "")
    assert threads == ref_threads  # same events, each exactly once
    assert engagements == ref_engagements


@pytest.mark.parametrize("in_flight", [3, 5])
async def test_failure_inside_a_batch_aborts_restores_and_retries(
    settings: Settings, unique: str, in_flight: int
) -> None:
    """An exception with the transaction open: the batch is aborted, state is restored from
    the changelogs, the consumer rewinds, and the retry produces each output exactly once;
    also with more batches computed ahead of the failed one (dropped, then recomputed)."""
    await load_inputs(settings, unique, inboxes=2)
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref", max_records=60)
    await run_processor(settings, reference, until_end=True)

    config = ProcessorConfig(
        group_id=f"flaky-{unique}",
        max_records=60,
        pause_in_transaction_s=0.01,
        batches_in_flight=in_flight,
    )
    processor = StreamProcessor(settings, config)
    calls = 0

    def fail_twice(partition: int, threads_here: int) -> None:
        nonlocal calls
        calls += 1
        if calls in (2, 5):
            raise RuntimeError("injected failure inside the transaction")

    processor.on_in_transaction = fail_twice
    await processor.start()
    try:
        stats = await processor.run(until_end=True)
    finally:
        await processor.stop()
    assert stats.aborted == 2
    assert await outputs(settings, "") == await outputs(settings, "ref")

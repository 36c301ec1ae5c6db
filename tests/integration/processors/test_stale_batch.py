"""A batch gathered across a rebalance is dropped, not processed under the new assignment.

The loop gathers a batch over several fetches and processes it after; a rebalance in between
revokes the partitions and hands them back read from the committed offsets. Processing the
old records as well did each of them twice: a zombie woken mid-fetch routed CRM records to
crm-by-inbox a second time (a fresh-clone CI run caught its extra offset commit)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from inboxstream.core.kafka import make_consumer
from inboxstream.core.settings import Settings
from inboxstream.processors.processor import (
    ProcessorConfig,
    Record,
    StreamProcessor,
    _Rebalance,
    run_processor,
)
from inboxstream.processors.topology import ProcessorTopics
from tests.helpers.pipeline import load_inputs, outputs, read_records

Outputs = tuple[Counter[str], Counter[str]]


async def test_a_batch_gathered_across_a_rebalance_is_dropped(
    settings: Settings, unique: str
) -> None:
    expected = await _inputs_and_reference(settings, unique)

    group = f"stale-{unique}"
    processor = StreamProcessor(settings, ProcessorConfig(group_id=group, max_records=10_000))
    await processor.start()
    assert processor._consumer is not None
    try:
        revocations = processor.revocations
        deadline = time.monotonic() + 60
        batch = await _first_batch(processor, deadline)
        everything = set(processor._consumer.assignment())

        # a second member joins (the partitions are split) and leaves (they come back)
        intruder = make_consumer(
            settings.kafka, group_id=group, partition_assignment_strategy=(RangePartitionAssignor,)
        )
        intruder.subscribe(list(processor.topics.inputs))
        await intruder.start()
        try:
            while not intruder.assignment():
                assert time.monotonic() < deadline, "the second member never got partitions"
                await intruder.getmany(timeout_ms=200)
        finally:
            await intruder.stop()
        while set(processor._consumer.assignment()) != everything or len(processor.states) < len(
            {tp.partition for tp in everything}
        ):
            assert time.monotonic() < deadline, "the partitions never came back"
            await asyncio.sleep(0.2)
        assert processor.revocations >= revocations + 2

        await processor._process_batch(batch, revocations)
        await processor.run(until_end=True)
    finally:
        await processor.stop()

    await _assert_each_once(settings, processor, expected)


async def test_records_held_when_a_revocation_starts_are_not_processed_after_it(
    settings: Settings, unique: str
) -> None:
    """The revocation waits for the transactions under way before it forgets the records
    held for the next batch, and the loop fetches meanwhile (it needs no lock to): a batch
    begun while a revocation is under way is gathered across it. (A zombie did this: woken,
    it fetched while its revocation waited for its fenced transaction, got the same
    partitions back, and processed the records it had held before it froze, committing an
    offset below the survivor's.)"""
    expected = await _inputs_and_reference(settings, unique)

    group = f"held-{unique}"
    processor = StreamProcessor(settings, ProcessorConfig(group_id=group, max_records=10_000))
    await processor.start()
    consumer = processor._consumer
    assert consumer is not None
    deadline = time.monotonic() + 60
    try:
        held = await _first_batch(processor, deadline)
        # the first assignment's restore done (it holds the lock the revocation will hold)
        while not processor.assigned_once or processor.lock.locked():
            assert time.monotonic() < deadline, "the first assignment never finished"
            await asyncio.sleep(0.05)
        # what the last batch held back: fetched (the position is past it), not committed
        processor._held = held
        # a transaction under way, which the revocation waits for
        gate = asyncio.Event()

        async def transaction() -> None:
            await gate.wait()

        processor._inflight[next(iter(held)).partition] = asyncio.ensure_future(transaction())

        # the group rebalances and gives this sole member the same partitions back (as when
        # an expelled member rejoins)
        consumer.subscribe(list(processor.topics.inputs), listener=_Rebalance(processor))
        while not processor.lock.locked():  # the revocation is waiting for the gate
            assert time.monotonic() < deadline, "the revocation never started"
            await asyncio.sleep(0.05)
        # the loop goes on meanwhile: the next batch begins (its fetch waits for the new
        # assignment, which waits for the revocation)
        revocations = processor.revocations
        fetching = asyncio.ensure_future(processor._fetch())
        await asyncio.sleep(0.5)
        gate.set()
        batch = await asyncio.wait_for(fetching, 60)  # once the partitions are back
        await processor._process_batch(batch, revocations)
        await asyncio.wait_for(processor.run(until_end=True), 120)
    finally:
        await processor.stop()

    await _assert_each_once(settings, processor, expected)


async def _inputs_and_reference(settings: Settings, unique: str) -> Outputs:
    """Two inboxes' inputs, and what an undisturbed run makes of them."""
    await load_inputs(settings, unique, inboxes=2)
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref", max_records=40)
    await run_processor(settings, reference, until_end=True)
    return await outputs(settings, "ref")


async def _first_batch(
    processor: StreamProcessor, deadline: float
) -> dict[TopicPartition, list[Record]]:
    batch = await processor._fetch()
    while not batch:  # joining the group, then the first records
        assert time.monotonic() < deadline, "no records came"
        batch = await processor._fetch()
    return batch


async def _assert_each_once(
    settings: Settings, processor: StreamProcessor, expected: Outputs
) -> None:
    """The outputs an undisturbed run gave, each input processed once, one batch dropped."""
    assert await outputs(settings, "") == expected
    topics = ProcessorTopics.build(settings.topics)
    routed = await read_records(settings, topics.crm_by_inbox)
    crm = await read_records(settings, topics.crm_outbound)
    # every CRM record routed to its inbox's partition once
    assert routed and Counter(r.value for r in routed) == Counter(r.value for r in crm)
    # each message processed once: what was dropped came again from the committed offsets
    assert processor.stats.counts["messages_duplicate"] == 0
    assert processor.stats.counts["stale_batches_dropped"] == 1

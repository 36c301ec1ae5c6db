"""A batch gathered across a rebalance is dropped, not processed under the new assignment.

The loop gathers a batch over several fetches and processes it after; a rebalance in between
revokes the partitions and hands them back read from the committed offsets. Processing the
old records as well did each of them twice: a zombie woken mid-fetch routed CRM records to
crm-by-inbox a second time (a fresh-clone CI run caught its extra offset commit)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from inboxstream.core.kafka import make_consumer
from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor, run_processor
from inboxstream.processors.topology import ProcessorTopics
from tests.helpers.pipeline import load_inputs, outputs, read_records


async def test_a_batch_gathered_across_a_rebalance_is_dropped(
    settings: Settings, unique: str
) -> None:
    await load_inputs(settings, unique, inboxes=2)
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref", max_records=40)
    await run_processor(settings, reference, until_end=True)
    expected = await outputs(settings, "ref")

    group = f"stale-{unique}"
    processor = StreamProcessor(settings, ProcessorConfig(group_id=group, max_records=10_000))
    await processor.start()
    assert processor._consumer is not None
    try:
        revocations = processor.revocations
        deadline = time.monotonic() + 60
        batch = await processor._fetch()
        while not batch:  # joining the group, then the first records
            assert time.monotonic() < deadline, "no records came"
            batch = await processor._fetch()
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

    assert await outputs(settings, "") == expected
    topics = ProcessorTopics.build(settings.topics)
    routed = await read_records(settings, topics.crm_by_inbox)
    crm = await read_records(settings, topics.crm_outbound)
    # every CRM record routed to its inbox's partition once
    assert routed and Counter(r.value for r in routed) == Counter(r.value for r in crm)
    assert processor.stats.counts["stale_batches_dropped"] == 1

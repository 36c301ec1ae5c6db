"""Replays: reprocess the inputs into a fresh consumer group and a new output version.

The replay group is ``<group>-replay-<version>`` and its outputs and state topics are the
version's own (``processors.topology``), so the first run is untouched and the two can be
compared. Without ``start`` the group begins at the earliest retained offset (a new group with
``auto_offset_reset=earliest``); with ``start`` its offsets are committed first from
``offsets_for_times`` (partitions with nothing after ``start`` begin at their end).

Same input, same output: thread ids, engagement ids and event ids are hashes of the inputs,
and time comes from the events. (A replay from a timestamp sees only the later messages, so
its threads are those of that suffix.)
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from inboxstream.core.kafka import ensure_topics, make_consumer, partitions_of
from inboxstream.core.settings import Settings
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.processor import ProcessorConfig, ProcessorStats, run_processor
from inboxstream.processors.topology import ProcessorTopics


def replay_group(base_group_id: str, version: str) -> str:
    return f"{base_group_id}-replay-{version}"


async def seek_group_to_time(
    settings: Settings, group_id: str, topics: tuple[str, ...], start: datetime
) -> dict[TopicPartition, int]:
    """Commit, for ``group_id``, the first offset at or after ``start`` of every partition."""
    consumer = make_consumer(settings.kafka, group_id=group_id)
    await consumer.start()
    try:
        tps = [tp for t in topics for tp in await partitions_of(consumer, t, wait_s=0)]
        found = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        end = await consumer.end_offsets(tps)
        offsets = {tp: (hit.offset if (hit := found.get(tp)) else end[tp]) for tp in tps}
        if not offsets:
            raise ValueError(f"none of {topics} has partitions; nothing to replay")
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        return offsets
    finally:
        await consumer.stop()


async def replay(
    settings: Settings,
    *,
    version: str,
    base_group_id: str = "inboxstream-processor",
    algorithm: Algorithm = "rfc5256",
    start: datetime | None = None,
    idle_exit_s: float | None = 10.0,
    stop: asyncio.Event | None = None,
    until_end: bool = False,
) -> ProcessorStats:
    """Run one instance of the replay group until it has read every input to its end
    (``until_end``) or has been idle for ``idle_exit_s``."""
    group = replay_group(base_group_id, version)
    topics = ProcessorTopics.build(settings.topics, version)
    await ensure_topics(settings.kafka, settings.topics, list(topics.specs))
    if start is not None:
        # The internal topic is derived from crm.outbound, so it replays from its own start.
        inputs = tuple(t for t in topics.inputs if t != topics.crm_by_inbox)
        await seek_group_to_time(settings, group, inputs, start)
    config = ProcessorConfig(
        group_id=group, instance_id="replay", algorithm=algorithm, version=version
    )
    return await run_processor(
        settings, config, stop=stop, idle_exit_s=idle_exit_s, until_end=until_end
    )

"""The only place that reaches into aiokafka's private attributes, each for a reason aiokafka
gives no public call for. Pinned to aiokafka 0.14 (pyproject.toml); an upgrade checks here.
Importing it (core/kafka.py does) also swaps in a faster event-loop lookup (see below).
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def cluster_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of any topic, from fresh cluster metadata. A consumer's own metadata
    only tracks what it subscribed to or was assigned, and a topic created a moment ago is
    not in it yet."""
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
    return set(cluster.partitions_for_topic(topic) or ())


def producer_is_fatal(producer: AIOKafkaProducer) -> bool:
    """Whether the producer hit a fatal error (fenced, in practice) in an earlier call.

    aiokafka raises ProducerFenced only to the call that met it - often its background sender,
    where nobody awaits it; the zombie's next calls on that producer then fail with
    IllegalOperation ("Not in the middle of a transaction") or a state assertion instead. The
    transaction manager keeps the fatal state (no public accessor)."""
    txn = getattr(producer, "_txn_manager", None)
    return bool(txn is not None and txn.is_fatal_error())


def use_fast_loop_lookup() -> None:
    """aiokafka creates a future for every record it sends through ``util.create_future``,
    which finds the loop with ``asyncio.get_event_loop()`` plus a running check: in Python
    3.11 that lookup was 11% of the stream processor's time (bench/processor.py, py-spy).
    ``asyncio.get_running_loop`` (C) answers the same, and raises RuntimeError outside a
    running loop as aiokafka's does. Idempotent."""
    import asyncio

    import aiokafka.util

    aiokafka.util.get_running_loop = asyncio.get_running_loop


use_fast_loop_lookup()

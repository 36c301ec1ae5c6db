"""The only place that reaches into aiokafka's private attributes, each for a reason aiokafka
gives no public call for. Pinned to aiokafka 0.14 (pyproject.toml); an upgrade checks here.
Importing it (core/kafka.py does) also swaps in a faster event-loop lookup, a cheaper zstd
level and a quicker retry of a transactional produce the broker could not verify (see below).
"""

from __future__ import annotations

from typing import Any

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


#: The zstd level of every record batch this process compresses. aiokafka 0.14 has no setting
#: for it and uses 3, Kafka's default. On our own records level 1 compresses 1.4-1.9 times as
#: fast at the same ratio (measured on the events of bench/big_mailbox.py: bodies 272 against
#: 199 MB/s, 4.00x and 3.99x; message events 484 against 333 MB/s, 6.90x and 7.06x; the
#: processor's changelogs and outputs 405-610 against 211-427 MB/s, 5.3-14.7x either way);
#: compressing was 12-14% of the processor's driver CPU (perf, bench/processor.py --one-thread).
ZSTD_LEVEL = 1


def use_zstd_level(level: int = ZSTD_LEVEL) -> None:
    """Have aiokafka's record batch builders (the compiled one, and the pure-Python one it
    falls back to) compress zstd at ``level``. They call the module-level ``zstd_encode``
    they imported from ``aiokafka.codec``, at no level; this replaces that name in both
    modules. Decompression needs no level. Idempotent."""
    import cramjam
    from aiokafka.record import default_records

    chosen = level

    def zstd_encode(payload: bytes, level: int | None = None) -> bytes:
        return bytes(cramjam.zstd.compress(payload, level=chosen if level is None else level))

    modules: list[object] = [default_records]
    try:
        from aiokafka.record._crecords import default_records as compiled
    except ImportError:  # no compiled extension: the pure-Python builder is the one in use
        pass
    else:
        modules.append(compiled)
    for module in modules:
        if hasattr(module, "zstd_encode"):
            setattr(module, "zstd_encode", zstd_encode)  # noqa: B010 (a module global)


#: How long a transactional producer waits before it sends again a batch the broker refused
#: with NOT_ENOUGH_REPLICAS, the first ``QUICK_RETRIES`` times: what aiokafka itself waits
#: after CONCURRENT_TRANSACTIONS on AddPartitionsToTxn (its ``BACKOFF_OVERRIDE``, KAFKA-5477).
QUICK_RETRY_S = 0.02
QUICK_RETRIES = 3
_NOT_ENOUGH_REPLICAS = 19


def use_quick_verification_retry() -> None:
    """A transactional produce that Kafka's transaction verification (KIP-890, on by default
    since 3.6) could not verify comes back NOT_ENOUGH_REPLICAS: the broker's ReplicaManager
    turns the coordinator's CONCURRENT_TRANSACTIONS (a change to the same transaction being
    logged, such as another partition joining it) into that error, because older clients
    retry it. aiokafka retries after ``retry_backoff_ms``, 100 ms, and the processor's
    partition waits that long inside its transaction: 0-2 times a 2-second pass of
    bench/processor.py, about 5% of the pass each time. Its response carries no message that
    tells this from an ISR that really shrank, so only the first ``QUICK_RETRIES`` sends of a
    batch wait ``QUICK_RETRY_S``; a refusal that lasts goes back to the usual backoff, and
    producers without a transaction keep it throughout. Idempotent."""
    from aiokafka.producer import sender

    handler = sender.SendProduceReqHandler
    if getattr(handler, "_inboxstream_quick_retry", False):
        return
    original = handler.handle_response

    def handle_response(self: Any, response: Any) -> None:
        original(self, response)
        txn = self._sender._txn_manager  # an idempotent producer has one too, without an id
        if self._to_reenqueue and txn is not None and txn.transactional_id is not None:
            # (partition, error code) lead every partition entry of every response version
            errors = {
                (topic, entry[0]): entry[1]
                for topic, entries in response.topics
                for entry in entries
            }
            if all(
                errors.get((batch.tp.topic, batch.tp.partition)) == _NOT_ENOUGH_REPLICAS
                and batch.retry_count <= QUICK_RETRIES
                for batch in self._to_reenqueue
            ):
                self._default_backoff = QUICK_RETRY_S  # this handler's wait only

    handler.handle_response = handle_response
    handler._inboxstream_quick_retry = True


use_fast_loop_lookup()
use_zstd_level()
use_quick_verification_retry()

"""The exactly-once driver of the stream processor: Kafka in, ``processors.engine`` in the
middle, Kafka out.

The domain (threads, CRM replies, held replies, retention) is the pure ``Engine``; this
module owns everything that needs Kafka: consumption, transactions, fencing, rebalances,
changelog restore, re-keying crm.outbound, reading held bodies back and dead letters.

One loop per instance, all instances in one consumer group (range assignment, so partition N of
every input topic goes to the same instance; see ``processors.topology``). Per batch:

    for each input partition N in the batch:
        async with producer_N.transaction():
            handle N's records in order: thread each message (inbox.threads events), hold or
                match replies (crm.engagements events), dead-letter poison records
            run N's event-time retention sweep
            write N's state changes to the changelogs (partition N)
            send_offsets_to_transaction(N's next offsets, group)

Any exception aborts the transaction; the instance then throws N's in-memory state away,
restores it from the changelogs and seeks back to the committed offsets, so the retry starts
from exactly what Kafka committed. A poison record (cannot be decoded, or its handling raised)
goes to the dead-letter topic inside the same transaction and processing goes on.

Transactions are per input partition: the owner of partition N uses a transactional producer
with id ``<group>-p<N>`` (Kafka Streams' producer-per-task model; aiokafka commits offsets by
group id only, without the group generation of KIP-447). Whoever takes partition N over - a
restarted instance after a kill -9 or another instance after a rebalance - starts that producer
first, which fences every earlier owner (a zombie cannot commit any more) and aborts its open
transaction, and only then restores the state. Rebalances wait for the batch in flight (a
lock), then drop revoked partitions' state and producers and set up newly assigned ones.

Bodies never enter state: a body whose message already matched CRM mail goes straight into the
engagement; a reply candidate (a message with In-Reply-To/References) not matched yet keeps
only the offset of its body in inbox.bodies, for ``REPLY_HOLD_MS``; if its crm.outbound record
comes in that window the body is read back from the topic (retained 7 days). Other bodies are
dropped. A body processed before its message (two topics, no order between them) is held the
same way, as an offset, until its message comes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced

from inboxstream.core.aiokafka_shim import producer_is_fatal
from inboxstream.core.batches import BatchSender
from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.kafka import (
    Failure,
    client_options,
    ensure_topics,
    make_consumer,
    partitions_of,
    send_to_dead_letter,
)
from inboxstream.core.metrics import (
    BATCH_RECORDS,
    BATCH_SECONDS,
    ERRORS,
    TRANSACTIONS,
    error_kind,
    observe_lag,
)
from inboxstream.core.settings import Settings
from inboxstream.processors.alignment import cap, in_step
from inboxstream.processors.body_cache import BODY_CACHE_BYTES
from inboxstream.processors.engine_process import EnginePool, EngineProcess
from inboxstream.processors.exceptions import EngineProcessDiedError, TopologyError
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.record_path import RecordPath, ShareOut
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import OutboundEvent
from inboxstream.schemas.serde import serde_for

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
BROADCAST_HEADER = "inboxstream.broadcast"
#: What re-keying reads of a crm.outbound record.
_ROUTE_FIELDS = ("message_id", "inbox_id")


@dataclass(frozen=True)
class ProcessorConfig:
    """How one processor instance runs. ``version`` names a replay's outputs."""

    group_id: str = "inboxstream-processor"
    instance_id: str = "0"
    algorithm: Algorithm = "rfc5256"
    version: str = ""
    # A transaction closes at ``max_records`` input records or ``transaction_ms`` after the
    # fetch that opened it, whichever comes first: bigger ones cost fewer commits, and the
    # time bound keeps a quiet stream's latency low.
    max_records: int = 5000
    transaction_ms: int = 100
    fetch_timeout_ms: int = 200
    # Batches dispatched and not yet committed: the loop fetches the next batch once the
    # oldest of them has committed, so the record path works on the newer ones while a
    # transaction commits and the next batch is fetched. With two, the engine process sat
    # idle 10-25% of a one-partition run waiting for fetch and commit round trips;
    # bench/processor.py 50000 went from 0.47-0.56 of the bare loop to 0.56-0.71 with three
    # (four measured the same). Every share is computed ahead of its commit either way; an
    # abort drops what was computed after it and restores (``_after``).
    batches_in_flight: int = 3
    # How long records may be held back for the other topic of their partition (messages
    # and bodies in step, ``processors.alignment``); 0 never holds any.
    align_wait_ms: int = 1000
    # False only for the benchmark's baseline: the same loop with at-least-once commits
    # (outputs flushed, then offsets committed; a crash in between duplicates output).
    exactly_once: bool = True
    # Test hook: sleep this long inside each transaction after the outputs were sent, and call
    # ``on_in_transaction(partition, thread events in this transaction)`` first, so a test can
    # kill the process with a transaction open that has thread output in the log.
    pause_in_transaction_s: float = 0.0
    # How long the group waits for a silent instance before giving its partitions to the others
    # (a frozen or partitioned instance; heartbeats go every third of it, at most every 3 s).
    # Tests shorten it; the broker's group.min.session.timeout.ms (6 s by default) is the floor.
    session_timeout_ms: int = 10_000
    # The record path (decoding, the engine, encoding; ``processors.record_path``) in this
    # many processes of their own, beside the driver's Kafka work (partition N's state in
    # process N mod their number); 0 runs it in the driver's process. None (the default):
    # one when this process may run on two cores or more, else 0. Measured on the 2-core box
    # with the broker beside them, one engine process ran at 1.02-1.35x the driver's process
    # alone once shares crossed on threads (README); on one core it only adds the pickling.
    engine_processes: int | None = None
    # Bytes of inbox.bodies records each record path keeps for engagements decided after the
    # body went by (``processors.body_cache``); 0 reads every such body back from Kafka.
    body_cache_bytes: int = BODY_CACHE_BYTES

    @property
    def engine_process_count(self) -> int:
        """``engine_processes``, with the default resolved for this machine."""
        if self.engine_processes is not None:
            return self.engine_processes
        return 1 if len(os.sched_getaffinity(0)) > 1 else 0


@dataclass
class ProcessorStats:
    batches: int = 0
    records: int = 0
    records_out: int = 0  # outputs and changelog writes sent (the bare benchmark sends as many)
    aborted: int = 0
    dead_lettered: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0  # wall time spent in batches (fetch waits excluded)
    first_batch_at: float = 0.0  # perf_counter() when the first batch started
    last_batch_at: float = 0.0  # and when the last one ended
    # thread events in transactions that committed (a test waits for some before its kill)
    threads_committed: int = 0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.processor.lock:
            gone = {tp.partition for tp in revoked}
            if not gone:
                return
            try:
                await self.processor._drain(gone)  # their open transactions finish first
                await self.processor.work.drop(gone)
                self.processor._drop_held(gone)
                for p in gone:
                    producer = self.processor._producers.pop(p, None)
                    if producer is not None:
                        await producer.stop()
            finally:
                # What the loop is gathering now was fetched for the old assignment. Counted
                # last (and even when the above failed): the loop fetches while the drain
                # waits (a fetch needs no lock) and takes the held records with it, so a
                # batch begun before this line may hold records the drop above never saw (a
                # woken zombie processed its own, held from before it froze, under the new
                # assignment: an offset went back).
                self.processor.revocations += 1
            log.info("%s: partitions %s revoked", self.processor.name, sorted(gone))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.processor.lock:
            self.processor.restoring = True
            try:
                await self.processor.restore_partitions({tp.partition for tp in assigned})
            finally:
                self.processor.restoring = False
                self.processor.assigned_once = True


class StreamProcessor:
    """Consume inbox and CRM events, produce threads and engagements, exactly once."""

    def __init__(self, settings: Settings, config: ProcessorConfig | None = None) -> None:
        self.settings = settings
        self.config = config or ProcessorConfig()
        self.topics = ProcessorTopics.build(settings.topics, self.config.version)
        self.name = f"{self.config.group_id}/{self.config.instance_id}"
        self.lock = asyncio.Lock()
        self.stats = ProcessorStats()
        self.work: RecordPath | EngineProcess | EnginePool
        work = (settings.kafka, self.topics, self.config.algorithm, self.stats.counts)
        cache = self.config.body_cache_bytes
        engines = self.config.engine_process_count
        if engines > 1:
            self.work = EnginePool(*work, cache, processes=engines)
        elif engines == 1:
            self.work = EngineProcess(*work, cache)
        else:
            self.work = RecordPath(*work, cache)
        self.on_in_transaction: Callable[[int, int], Awaitable[None] | None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # With exactly-once, one transactional producer per owned input partition
        # (``<group>-p<N>``), as Kafka Streams does per task: whoever takes partition N over
        # fences every earlier owner of it, zombie or crashed.
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._plain_producer: AIOKafkaProducer | None = None
        # Transactions under way (the latest task per partition), the partitions to rewind
        # after an abort, and an epoch per partition that an abort or a fencing moves on, so
        # shares handed over before it are dropped (``_after``).
        self._inflight: dict[int, asyncio.Task[None]] = {}
        # each dispatched batch's transactions, oldest first (back pressure, ``_process_batch``)
        self._dispatched: deque[list[asyncio.Task[None]]] = deque()
        self._needs_rewind: set[int] = set()
        self._epoch: dict[int, int] = {}
        self._active = 0
        self._busy_since = 0.0
        self._partition_of: dict[tuple[str, bytes | None], int] = {}
        # Records fetched and held back for the next batch (``_in_step``): the consumer's
        # position is past them and no commit covers them. Since when records have waited for
        # each input partition that has more to read and brought nothing.
        self._held: dict[TopicPartition, list[Record]] = {}
        self._waiting_since: dict[TopicPartition, float] = {}
        # the topic partitions that held records wait for (drawn first by the next fetch)
        self._lagging: set[TopicPartition] = set()
        self._capped = False  # the last batch held records it could have taken but for size
        # Rebalances that took partitions away: a batch gathered across one is stale
        # (``_process_batch``).
        self.revocations = 0
        # for /readyz (core/ops_server.py)
        self.restoring = False
        self.assigned_once = False

    @property
    def states(self) -> set[int]:
        """The input partitions whose state this instance holds (restored, not revoked)."""
        return self.work.partitions

    # --- lifecycle ------------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when processing; else why not (for ``/readyz``)."""
        if self._consumer is None:
            return "not started"
        if self.restoring:
            return "restoring partition state after a rebalance"
        if not self.assigned_once:
            return f"waiting for a partition assignment in group {self.config.group_id}"
        return None

    async def start(self) -> None:
        _FencedLeftovers.install(asyncio.get_running_loop())
        await ensure_topics(self.settings.kafka, self.settings.topics, list(self.topics.specs))
        await self.work.start()
        if not self.config.exactly_once:
            self._plain_producer = self._new_producer(None)
            await self._plain_producer.start()
        self._consumer = make_consumer(
            self.settings.kafka,
            group_id=self.config.group_id,
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_interval_ms=300_000,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=min(3_000, self.config.session_timeout_ms // 3),
        )
        await self._consumer.start()
        await self._check_copartitioned()
        self._consumer.subscribe(list(self.topics.inputs), listener=_Rebalance(self))

    def _new_producer(self, transactional_id: str | None) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_options(self.settings.kafka),
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            # A batch sends a few thousand small records; aiokafka waits for a full
            # per-partition batch to drain before adding more, so big batches save round trips.
            max_batch_size=1024 * 1024,
            compression_type="zstd",  # see core/kafka.py: aiokafka runs lz4 at level 9
        )

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        for producer in [*self._producers.values(), self._plain_producer]:
            if producer is not None:
                await producer.stop()
        self._producers.clear()
        await self.work.close()

    async def _check_copartitioned(self) -> None:
        assert self._consumer is not None
        counts = {}
        for topic in (*self.topics.inputs, *self.topics.changelogs.values()):
            # A topic created a moment ago can take seconds to show in the metadata of a
            # broker that has just started (seen on a loaded box: 0 partitions after 5 s).
            counts[topic] = len(await partitions_of(self._consumer, topic, wait_s=30.0))
        missing = sorted(topic for topic, n in counts.items() if n == 0)
        if missing:
            raise TopologyError(f"topics not found (or without partitions): {missing}")
        if len(set(counts.values())) != 1:
            raise TopologyError(f"input and changelog topics differ in partitions: {counts}")

    async def restore_partitions(self, partitions: set[int]) -> None:
        assert self._consumer is not None
        missing = partitions - self.states
        if self.config.exactly_once:
            for p in sorted(missing - set(self._producers)):
                # Starting it (InitProducerId) fences every earlier producer of partition p and
                # aborts its open transaction, before we read the changelogs.
                producer = self._new_producer(f"{self.config.group_id}-p{p}")
                await producer.start()
                self._producers[p] = producer
        if missing:
            await self.work.restore(missing)

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        idle_exit_s: float | None = None,
        until_end: bool = False,
    ) -> ProcessorStats:
        """Process until ``stop`` is set; or, with ``until_end``, until every assigned input
        partition is read to its end offset (a batch job, a replay, a test: done means done,
        not "quiet for a while"); or until nothing came for ``idle_exit_s`` seconds."""
        assert self._consumer is not None
        last_data = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                self.work.check()  # an engine process gone with the state: stop, never go on
                revocations = self.revocations
                batch = await self._fetch()
                if batch:
                    observe_lag(self.config.group_id, self._consumer, batch)
                    await self._process_batch(batch, revocations)
                    # idle counts from the end of the last batch: a batch that took longer
                    # than idle_exit_s must not look like silence
                    last_data = time.monotonic()
                elif until_end and await self._caught_up():
                    break
                elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                    break
        except EngineProcessDiedError:
            # the other transactions under way end (each aborts or commits whole) first
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            raise
        await self._drain()
        return self.stats

    async def _caught_up(self) -> bool:
        """Every assigned input partition restored and read to its (committed) end offset.
        Asked afresh each time: crm-by-inbox grows with our own commits."""
        assert self._consumer is not None
        await self._drain()  # positions count fetched records; done means committed
        async with self.lock:
            if self._held:
                return False
            assigned = list(self._consumer.assignment())
            if not assigned or any(tp.partition not in self.states for tp in assigned):
                return False
            end = await self._consumer.end_offsets(assigned)
            for tp in assigned:
                if await self._consumer.position(tp) < end[tp]:
                    return False
            return True

    async def _fetch(self) -> dict[TopicPartition, list[Record]]:
        """The next batch: the records held back from the last one (``_in_step``), then up
        to ``max_records`` new ones. The topic partitions that held records wait for are
        drawn first, from what the consumer has buffered: getmany would otherwise hand back
        the other partitions' buffers first, in the order their fetches came.

        New records are not cut by what is held: aiokafka sends the next fetch to a broker
        only once every partition's buffer from it is drained (or a backoff has passed), so
        draining whole buffers into the held records is what brings the lagging topic. The
        transaction is cut to ``max_records`` after (``_in_step``), and a topic partition
        with a batch's worth held is paused, so what is held stays bounded."""
        consumer = self._consumer
        assert consumer is not None
        held, self._held = self._held, {}
        budget = self.config.max_records
        first: dict[TopicPartition, list[Record]] = {}
        lagging = self._lagging & consumer.assignment()
        if lagging:
            first = await consumer.getmany(*lagging, timeout_ms=0, max_records=budget)
            budget -= sum(len(records) for records in first.values())
        batch = {}
        if budget > 0:
            batch = await collect_batch(
                consumer,
                max_records=budget,
                max_ms=self.config.transaction_ms,
                # records ready and cut only by the size (``cap``) go without waiting
                first_timeout_ms=0 if first or self._capped else self.config.fetch_timeout_ms,
            )
        for earlier in (first, held):  # held came before first, first before the rest
            for tp, records in earlier.items():
                batch[tp] = records + batch.get(tp, [])
        return batch

    async def _in_step(
        self, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        """``batch`` with each partition's messages and bodies in step: the records of one
        topic later than the last of the other, while that other has more to read, are held
        for the next batch (``processors.alignment``); a topic partition with nothing in
        the batch is waited for ``align_wait_ms`` at most. Then cut to ``max_records``."""
        consumer = self._consumer
        assert consumer is not None
        wait_s = self.config.align_wait_ms / 1000
        self._lagging = set()
        if wait_s <= 0:
            return batch
        now = time.monotonic()
        messages, bodies = self.topics.messages, self.topics.bodies
        assigned = consumer.assignment()
        pairs = {TopicPartition(t, tp.partition) for tp in batch for t in (messages, bodies)}
        pairs &= assigned
        positions = {tp: await consumer.position(tp) for tp in pairs}
        for tp in pairs:
            if batch.get(tp):
                self._waiting_since.pop(tp, None)  # it came: a wait for it starts afresh

        def more_to_read(tp: TopicPartition) -> bool:
            if tp not in pairs:
                return False
            # read_committed: the last stable offset; one offset past the position may be
            # a transaction marker, not a record
            end = consumer.last_stable_offset(tp) or consumer.highwater(tp)
            if end is None or end <= positions[tp] + 1:
                self._waiting_since.pop(tp, None)
                return False
            if batch.get(tp):
                return True
            return now - self._waiting_since.setdefault(tp, now) <= wait_s

        ready, held = in_step(batch, messages, bodies, more_to_read)
        partner = {messages: bodies, bodies: messages}
        self._lagging = {TopicPartition(partner[tp.topic], tp.partition) for tp in held}
        # the transaction stays within max_records, cut where the topics stay in step
        waiting = sum(len(records) for records in held.values())
        ready, held = cap(ready, held, self.config.max_records)
        held_count = sum(len(records) for records in held.values())
        self._capped = held_count > waiting
        self.stats.counts["records_held"] += held_count
        self._held = held
        # A topic partition with a batch's worth held stops fetching (as Kafka Streams
        # pauses a partition whose buffer is full) until the batches have taken them.
        full = {tp for tp, records in held.items() if len(records) >= self.config.max_records}
        full &= assigned
        consumer.resume(*(consumer.paused() - full))
        consumer.pause(*(full - consumer.paused()))
        return ready

    def _drop_held(self, partitions: set[int] | None = None) -> None:
        """Forget the records held of ``partitions`` (all by default): their consumer
        positions are being moved back to a commit, or they are gone."""
        assert self._consumer is not None
        for tp in list(self._held):
            if partitions is None or tp.partition in partitions:
                del self._held[tp]
        self._consumer.resume(
            *(
                tp
                for tp in self._consumer.paused()
                if partitions is None or tp.partition in partitions
            )
        )
        for tp in list(self._waiting_since):
            if partitions is None or tp.partition in partitions:
                del self._waiting_since[tp]

    # --- one batch ------------------------------------------------------------------------

    async def _process_batch(
        self, batch: dict[TopicPartition, list[Record]], revocations: int
    ) -> None:
        """Hand each partition's share of the batch to a transaction of its own;
        ``revocations`` is the count when its gathering began.

        With exactly once the transactions run as tasks, side by side, and the loop goes on
        fetching while they commit: partition N's next transaction starts when its previous
        one has committed (one open transaction per producer), and once
        ``batches_in_flight`` batches are under way the loop waits for the oldest one's
        transactions before it fetches again. So one partition's commit round trips overlap
        the others' processing and the record path's work on the batches after it."""
        async with self.lock:
            if revocations != self.revocations:
                # A rebalance came while the batch was gathered (over several fetches, or
                # between the fetch and this lock). Its older records were fetched for the
                # old assignment: if a partition came back to us, the consumer now reads it
                # again from the committed offset, and processing them would process them
                # twice (a zombie woken mid-fetch did: it routed CRM records again). What
                # came after the new assignment is dropped with them, so every assigned
                # partition goes back to its committed offset; no transaction has run since.
                self.stats.counts["stale_batches_dropped"] += 1
                log.info("%s: dropping a batch gathered across a rebalance", self.name)
                await self._seek_to_committed()
                return
            # A failed transaction's partition is rewound here, between fetches, never while
            # a fetch is under way: what a fetch brought before the seek is dropped with it.
            for p in sorted(self._needs_rewind):
                batch = {tp: recs for tp, recs in batch.items() if tp.partition != p}
            await self._rewind_pending()
            batch = await self._in_step(batch)
            # The assignment may have changed while we waited for the lock.
            by_partition: dict[int, dict[TopicPartition, list[Record]]] = {}
            for tp, records in batch.items():
                if tp.partition in self.states:
                    by_partition.setdefault(tp.partition, {})[tp] = records
            if not self.config.exactly_once:
                for p in sorted(by_partition):
                    await self._timed(self._process_at_least_once(by_partition[p]))
                return
            tasks = []
            for p in sorted(by_partition):
                after = self._inflight.get(p)
                self._inflight[p] = task = asyncio.create_task(
                    self._timed(self._after(after, p, self._epoch.get(p, 0), by_partition[p]))
                )
                tasks.append(task)
            self._dispatched.append(tasks)
        # back pressure: the oldest batches' transactions are done before the next fetch
        while len(self._dispatched) >= max(1, self.config.batches_in_flight):
            await _settle(self._dispatched.popleft())

    async def _after(
        self,
        previous: asyncio.Task[None] | None,
        partition: int,
        epoch: int,
        share: dict[TopicPartition, list[Record]],
    ) -> None:
        """Partition N's transaction for ``share``, once its previous one has committed;
        dropped when that one aborted or was fenced, or N was revoked, since ``share`` was
        handed over (its records come again from the committed offsets after the rewind, or
        go to the new owner).

        The record path starts on ``share`` at once, not after that commit: the engine
        process works on it while the driver sends and commits the previous share. So N's
        state runs ahead of what is committed; when the previous transaction aborts or is
        fenced, what was computed here is dropped with it, and the rewind restores the state
        from the changelogs (the record path takes shares and restores in the order given)."""
        computing = asyncio.ensure_future(self._compute(partition, share))
        if previous is not None:
            await _settle([previous])
        if (
            self._epoch.get(partition, 0) != epoch
            or partition in self._needs_rewind
            or partition not in self.states
            or partition not in self._producers
        ):
            # what it gave goes nowhere; a failure in it is moot (the state is restored)
            await asyncio.gather(computing, return_exceptions=True)
            return
        await self._process_transaction(partition, computing)

    async def _timed(self, work: Awaitable[None]) -> None:
        """Run ``work``, counting wall time while any transaction is under way as busy."""
        if not self._active:
            self._busy_since = time.perf_counter()
            self.stats.first_batch_at = self.stats.first_batch_at or self._busy_since
        self._active += 1
        try:
            await work
        finally:
            self._active -= 1
            if not self._active:
                self.stats.last_batch_at = time.perf_counter()
                self.stats.busy_s += self.stats.last_batch_at - self._busy_since

    async def _drain(self, partitions: set[int] | None = None) -> None:
        """Wait for the transactions under way (of ``partitions``, or all of them)."""
        tasks = [t for p, t in self._inflight.items() if partitions is None or p in partitions]
        await _settle(tasks)
        for p, task in list(self._inflight.items()):
            if task.done():
                del self._inflight[p]

    async def _process_transaction(self, partition: int, computing: Awaitable[_Share]) -> None:
        """One input partition's share of the batch, in that partition's transaction."""
        txn = _Txn(self._producers[partition], partition, self._partition_of)
        started = time.perf_counter()
        size = 0
        try:
            async with txn.producer.transaction():
                share = await computing
                size = share.size
                offsets = await self._send_share(txn, share)
                if self.config.pause_in_transaction_s:
                    # the outputs are in the log, uncommitted, when the hook fires
                    await txn.producer.flush()
                    if self.on_in_transaction is not None:
                        maybe = self.on_in_transaction(partition, txn.threads_sent)
                        if maybe is not None:
                            await maybe
                    await asyncio.sleep(self.config.pause_in_transaction_s)
                if offsets:
                    await txn.producer.send_offsets_to_transaction(offsets, self.config.group_id)
        except Exception as exc:
            if isinstance(exc, EngineProcessDiedError):
                raise  # the transaction is aborted; the instance stops (``run``)
            if not (isinstance(exc, ProducerFenced) or producer_is_fatal(txn.producer)):
                self.stats.aborted += 1
                TRANSACTIONS.labels("aborted").inc()
                ERRORS.labels("processor", error_kind(exc)).inc()
                log.exception(
                    "%s: batch of partition %d aborted; restoring and rewinding",
                    self.name,
                    partition,
                )
                # rewound by the loop before its next dispatch (``_process_batch``)
                self._epoch[partition] = self._epoch.get(partition, 0) + 1
                self._needs_rewind.add(partition)
                await asyncio.sleep(1.0)
                return
            # A newer owner of this partition exists (we were expelled from the group and the
            # rebalance has not reached us yet): its transaction is the one that counts. Forget
            # the partition; our next assignment restores what is committed. Never retry with
            # this producer, and never replace it: a new one would fence the rightful owner.
            self.stats.counts["fenced"] += 1
            TRANSACTIONS.labels("fenced").inc()
            log.warning("%s: fenced on partition %d (%r); dropping it", self.name, partition, exc)
            self._epoch[partition] = self._epoch.get(partition, 0) + 1
            await self.work.drop({partition})
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await producer.stop()
            return
        self.stats.batches += 1
        self.stats.threads_committed += txn.threads_sent
        TRANSACTIONS.labels("committed").inc()
        BATCH_RECORDS.labels("processor").observe(size)
        BATCH_SECONDS.labels("processor").observe(time.perf_counter() - started)

    async def _process_at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Baseline for the benchmark only: no transaction, commit after the outputs flushed."""
        assert self._plain_producer is not None and self._consumer is not None
        partition = next(iter(batch)).partition
        txn = _Txn(self._plain_producer, partition, self._partition_of)
        offsets = await self._send_share(txn, await self._compute(partition, batch))
        await txn.producer.flush()
        if offsets:
            await self._consumer.commit(offsets)
        self.stats.batches += 1

    async def _rewind_pending(self) -> None:
        """Rewind the partitions whose transaction aborted (under the lock, between fetches)."""
        pending, self._needs_rewind = self._needs_rewind, set()
        pending &= self.states
        if pending:
            await self._drain(pending)
            await self._rewind(pending)

    async def _rewind(self, partitions: set[int]) -> None:
        """After an abort: state and positions back to what the last commit says."""
        assert self._consumer is not None
        await self.work.drop(partitions)
        await self.restore_partitions(partitions)
        await self._seek_to_committed(partitions)

    async def _seek_to_committed(self, partitions: set[int] | None = None) -> None:
        """Positions of ``partitions`` (every assigned one by default) back to the commit."""
        assert self._consumer is not None
        self._drop_held(partitions)
        for tp in self._consumer.assignment():
            if partitions is not None and tp.partition not in partitions:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _compute(self, partition: int, batch: dict[TopicPartition, list[Record]]) -> _Share:
        """One partition's share through the record path (no Kafka; nothing sent yet)."""
        offsets: dict[TopicPartition, int] = {}
        # Messages first: a body in the same share then finds its message.
        order = {self.topics.messages: 0, self.topics.crm_by_inbox: 1}
        records: list[Record] = []
        outbound: list[Record] = []
        for tp in sorted(batch, key=lambda t: (order.get(t.topic, 2), t.topic, t.partition)):
            share = batch[tp]
            offsets[tp] = share[-1].offset + 1
            # crm.outbound is re-keyed by the driver: sending only, no state
            (outbound if tp.topic == self.topics.crm_outbound else records).extend(share)
        out = await self.work.handle(partition, records)
        return _Share(offsets, outbound, records, out)

    async def _send_share(self, txn: _Txn, share: _Share) -> dict[TopicPartition, int]:
        """What a share gave, sent in its (open) transaction; the offsets to commit."""
        for rec in share.outbound:
            await self._route(txn, rec)
        for index, stage, why in share.out.failures:  # one bad record never stops the partition
            await self._dead_letter(txn, share.records[index], stage, why)
        await txn.sender.send_all(share.out.outgoing)
        self.stats.records += share.size
        self.stats.records_out += len(share.out.outgoing)
        txn.threads_sent += share.out.threads
        return share.offsets

    async def _route(self, txn: _Txn, rec: Record) -> None:
        """One crm.outbound record re-keyed into crm-by-inbox, or dead-lettered."""
        stage = "decode"
        try:
            # the two fields routing reads (the record path decodes the rest)
            outbound = serde_for(OutboundEvent).decode_fields(rec.value, rec.headers, _ROUTE_FIELDS)
            stage = "repartition"
            await self._repartition(txn, rec, outbound["message_id"], outbound["inbox_id"])
        except Exception as exc:
            await self._dead_letter(txn, rec, stage, exc)

    async def _dead_letter(
        self, txn: _Txn, rec: Record, stage: str, why: BaseException | Failure
    ) -> None:
        self.stats.dead_lettered += 1
        self.stats.counts[f"dead_letter:{rec.topic}"] += 1
        await send_to_dead_letter(txn.producer, self.topics.dead_letter, rec, stage, why)

    async def _repartition(
        self, txn: _Txn, rec: Record, message_id: str, inbox_id: str | None
    ) -> None:
        """crm.outbound -> crm-by-inbox: to the inbox's partition, or to all of them."""
        headers = list(rec.headers or ())
        if inbox_id:
            await txn.producer.send(
                self.topics.crm_by_inbox, rec.value, key=inbox_id.encode(), headers=headers
            )
            self.stats.counts["crm_routed"] += 1
            return
        partitions = await txn.producer.partitions_for(self.topics.crm_by_inbox)
        for p in sorted(partitions):
            await txn.producer.send(
                self.topics.crm_by_inbox,
                rec.value,
                key=message_id.encode(),
                partition=p,
                headers=[*headers, (BROADCAST_HEADER, b"1")],
            )
        self.stats.counts["crm_broadcast"] += 1


@dataclass
class _Share:
    """One partition's share of a batch, through the record path, not sent yet."""

    offsets: dict[TopicPartition, int]  # the next offset of each input partition
    outbound: list[Record]  # crm.outbound records, re-keyed in the transaction
    records: list[Record]  # the rest, in the order the record path took them
    out: ShareOut

    @property
    def size(self) -> int:
        return len(self.outbound) + len(self.records)


@dataclass
class _Txn:
    """One input partition's share of a batch: its producer (transactional with exactly
    once) and what its transaction sent."""

    producer: AIOKafkaProducer
    partition: int
    partitions: dict[tuple[str, bytes | None], int]  # the key -> partition cache, shared
    threads_sent: int = 0  # thread events sent in this transaction
    sender: BatchSender = field(init=False)

    def __post_init__(self) -> None:
        self.sender = BatchSender(self.producer, self.partitions)


class _FencedLeftovers:
    """The loop's exception handler, passing on all but one thing: a future that failed
    with ProducerFenced and that nobody awaited. A fenced producer fails every send and
    batch of its transaction with a copy of the error (each batch's drain waiter too, inside
    aiokafka); the transaction's own error is handled (``_process_transaction``) and logged
    once, as a warning. Without this, asyncio logged each copy as an ERROR, traceback and
    all ("Future exception was never retrieved"): a dozen for one woken zombie. Left on
    the loop: the copies are collected late, some after the processor stopped."""

    def __init__(self, previous: Callable[..., object] | None) -> None:
        self.previous = previous
        self.taken = 0

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> None:
        if not isinstance(loop.get_exception_handler(), cls):
            loop.set_exception_handler(cls(loop.get_exception_handler()))

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ProducerFenced) and "never retrieved" in str(
            context.get("message", "")
        ):
            self.taken += 1
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``tasks``; an exception one of them raised (a bug: transactions catch their
    own failures) is raised here, in the loop, instead of vanishing with the task."""
    if tasks:
        await asyncio.gather(*tasks)


async def collect_batch(
    consumer: AIOKafkaConsumer, *, max_records: int, max_ms: int, first_timeout_ms: int
) -> dict[TopicPartition, list[Record]]:
    """Up to ``max_records``, gathered for at most ``max_ms`` after the first fetch brought
    something: getmany hands back whatever one fetch brought (often a few records per
    partition), and bigger transactions mean fewer commits, which is where exactly-once costs.
    The benchmark's bare loop batches with this same function."""
    batch: dict[TopicPartition, list[Record]] = await consumer.getmany(
        timeout_ms=first_timeout_ms, max_records=max_records
    )
    total = sum(len(r) for r in batch.values())
    deadline = time.perf_counter() + max_ms / 1000
    while batch and total < max_records:
        left_ms = int((deadline - time.perf_counter()) * 1000)
        if left_ms <= 0:
            break
        more = await consumer.getmany(timeout_ms=min(left_ms, 20), max_records=max_records - total)
        if not more:
            break  # nothing buffered and nothing came: the stream is quiet, commit now
        for tp, records in more.items():
            batch.setdefault(tp, []).extend(records)
            total += len(records)
    return batch


async def run_processor(
    settings: Settings,
    config: ProcessorConfig | None = None,
    *,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
    until_end: bool = False,
) -> ProcessorStats:
    """Start one instance, run it, stop it (what the CLI and the tests call)."""
    tune_for_streaming()
    processor = StreamProcessor(settings, config)
    await processor.start()
    try:
        return await processor.run(stop, idle_exit_s=idle_exit_s, until_end=until_end)
    finally:
        await processor.stop()

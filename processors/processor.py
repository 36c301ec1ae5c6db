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
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced

from inboxstream.core.aiokafka_shim import producer_is_fatal
from inboxstream.core.batches import BatchSender, Outgoing
from inboxstream.core.gc_tuning import SurvivorFreezer, tune_for_streaming
from inboxstream.core.kafka import (
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
from inboxstream.processors.engine import BodyRead, Emit, Engine, Step
from inboxstream.processors.exceptions import TopologyError
from inboxstream.processors.inputs import (
    BODY_FIELDS,
    BODY_HEAD_FIELDS,
    MESSAGE_FIELDS,
    BodyHead,
    MessageIn,
    body_of_record,
)
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.records import Body
from inboxstream.processors.state import PartitionState, restore
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import BodyEvent, EngagementEvent, MessageEvent, OutboundEvent
from inboxstream.schemas.serde import serde_for

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
BROADCAST_HEADER = "inboxstream.broadcast"


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


#: How long the record loop may hold the event loop before giving it a turn (heartbeats, fetches).
YIELD_EVERY_S = 0.05


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
            if revoked:
                # what the loop is gathering now was fetched for the old assignment
                self.processor.revocations += 1
            gone = {tp.partition for tp in revoked}
            await self.processor._drain(gone)  # their open transactions finish first
            for p in gone:
                self.processor.states.pop(p, None)
                producer = self.processor._producers.pop(p, None)
                if producer is not None:
                    await producer.stop()
            if gone:
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
        self.states: dict[int, PartitionState] = {}
        self.stats = ProcessorStats()
        self.engine = Engine(self.stats.counts)
        self._freezer = SurvivorFreezer()
        self.on_in_transaction: Callable[[int, int], Awaitable[None] | None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # With exactly-once, one transactional producer per owned input partition
        # (``<group>-p<N>``), as Kafka Streams does per task: whoever takes partition N over
        # fences every earlier owner of it, zombie or crashed.
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._plain_producer: AIOKafkaProducer | None = None
        self._body_reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()
        # Transactions under way (the latest task per partition), the partitions to rewind
        # after an abort, and an epoch per partition that an abort or a fencing moves on, so
        # shares handed over before it are dropped (``_after``).
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._needs_rewind: set[int] = set()
        self._epoch: dict[int, int] = {}
        self._active = 0
        self._busy_since = 0.0
        self._partition_of: dict[tuple[str, bytes | None], int] = {}
        # Rebalances that took partitions away: a batch gathered across one is stale
        # (``_process_batch``).
        self.revocations = 0
        # for /readyz (core/ops_server.py)
        self.restoring = False
        self.assigned_once = False

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
        await ensure_topics(self.settings.kafka, self.settings.topics, list(self.topics.specs))
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
        if self._body_reader is not None:
            await self._body_reader.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        for producer in [*self._producers.values(), self._plain_producer]:
            if producer is not None:
                await producer.stop()
        self._producers.clear()

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
        missing = partitions - set(self.states)
        if self.config.exactly_once:
            for p in sorted(missing - set(self._producers)):
                # Starting it (InitProducerId) fences every earlier producer of partition p and
                # aborts its open transaction, before we read the changelogs.
                producer = self._new_producer(f"{self.config.group_id}-p{p}")
                await producer.start()
                self._producers[p] = producer
        if missing:
            restored = await restore(
                self.settings.kafka, self.topics.changelogs, missing, self.config.algorithm
            )
            self.states.update(restored)

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
        while stop is None or not stop.is_set():
            revocations = self.revocations
            batch = await self._fetch()
            if batch:
                observe_lag(self.config.group_id, self._consumer, batch)
                await self._process_batch(batch, revocations)
                # idle counts from the end of the last batch: a batch that took longer than
                # idle_exit_s must not look like silence
                last_data = time.monotonic()
            elif until_end and await self._caught_up():
                break
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
        await self._drain()
        return self.stats

    async def _caught_up(self) -> bool:
        """Every assigned input partition restored and read to its (committed) end offset.
        Asked afresh each time: crm-by-inbox grows with our own commits."""
        assert self._consumer is not None
        await self._drain()  # positions count fetched records; done means committed
        async with self.lock:
            assigned = list(self._consumer.assignment())
            if not assigned or any(tp.partition not in self.states for tp in assigned):
                return False
            end = await self._consumer.end_offsets(assigned)
            for tp in assigned:
                if await self._consumer.position(tp) < end[tp]:
                    return False
            return True

    async def _fetch(self) -> dict[TopicPartition, list[Record]]:
        assert self._consumer is not None
        return await collect_batch(
            self._consumer,
            max_records=self.config.max_records,
            max_ms=self.config.transaction_ms,
            first_timeout_ms=self.config.fetch_timeout_ms,
        )

    # --- one batch ------------------------------------------------------------------------

    async def _process_batch(
        self, batch: dict[TopicPartition, list[Record]], revocations: int
    ) -> None:
        """Hand each partition's share of the batch to a transaction of its own;
        ``revocations`` is the count when its gathering began.

        With exactly once the transactions run as tasks, side by side, and the loop goes on
        fetching while they commit: partition N's next transaction starts when its previous
        one has committed (one open transaction per producer), and the loop waits for the
        previous batch's transactions before it fetches the one after this (two batches in
        flight at most). So one partition's commit round trips overlap the others'
        processing, also across batches."""
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
            # The assignment may have changed while we waited for the lock.
            by_partition: dict[int, dict[TopicPartition, list[Record]]] = {}
            for tp, records in batch.items():
                if tp.partition in self.states:
                    by_partition.setdefault(tp.partition, {})[tp] = records
            if not self.config.exactly_once:
                for p in sorted(by_partition):
                    await self._timed(self._process_at_least_once(by_partition[p]))
                return
            previous = list(self._inflight.values())
            for p in sorted(by_partition):
                after = self._inflight.get(p)
                self._inflight[p] = asyncio.create_task(
                    self._timed(self._after(after, p, self._epoch.get(p, 0), by_partition[p]))
                )
        # back pressure: the previous batch's transactions are done before the next fetch
        await _settle(previous)

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
        go to the new owner)."""
        if previous is not None:
            await _settle([previous])
        if (
            self._epoch.get(partition, 0) != epoch
            or partition in self._needs_rewind
            or partition not in self.states
            or partition not in self._producers
        ):
            return
        await self._process_transaction(partition, share)

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

    async def _process_transaction(
        self, partition: int, batch: dict[TopicPartition, list[Record]]
    ) -> None:
        """One input partition's share of the batch, in that partition's transaction."""
        txn = _Txn(self._producers[partition], self.states[partition], self._partition_of)
        started = time.perf_counter()
        try:
            async with txn.producer.transaction():
                offsets = await self._handle_batch(txn, batch)
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
            self.states.pop(partition, None)
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await producer.stop()
            return
        self.stats.batches += 1
        self.stats.threads_committed += txn.threads_sent
        TRANSACTIONS.labels("committed").inc()
        BATCH_RECORDS.labels("processor").observe(sum(len(r) for r in batch.values()))
        BATCH_SECONDS.labels("processor").observe(time.perf_counter() - started)

    async def _process_at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Baseline for the benchmark only: no transaction, commit after the outputs flushed."""
        assert self._plain_producer is not None and self._consumer is not None
        partition = next(iter(batch)).partition
        txn = _Txn(self._plain_producer, self.states[partition], self._partition_of)
        offsets = await self._handle_batch(txn, batch)
        await txn.producer.flush()
        if offsets:
            await self._consumer.commit(offsets)
        self.stats.batches += 1

    async def _rewind_pending(self) -> None:
        """Rewind the partitions whose transaction aborted (under the lock, between fetches)."""
        pending, self._needs_rewind = self._needs_rewind, set()
        pending &= set(self.states)
        if pending:
            await self._drain(pending)
            await self._rewind(pending)

    async def _rewind(self, partitions: set[int]) -> None:
        """After an abort: state and positions back to what the last commit says."""
        assert self._consumer is not None
        for p in partitions:
            self.states.pop(p, None)
        await self.restore_partitions(partitions)
        await self._seek_to_committed(partitions)

    async def _seek_to_committed(self, partitions: set[int] | None = None) -> None:
        """Positions of ``partitions`` (every assigned one by default) back to the commit."""
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            if partitions is not None and tp.partition not in partitions:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _handle_batch(
        self, txn: _Txn, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        # Messages first: a body in the same batch then finds its message.
        order = {self.topics.messages: 0, self.topics.crm_by_inbox: 1}
        yielded = time.perf_counter()
        for tp in sorted(batch, key=lambda t: (order.get(t.topic, 2), t.topic, t.partition)):
            for rec in batch[tp]:
                await self._handle_record(txn, rec)
                offsets[tp] = rec.offset + 1
                self.stats.records += 1
                if time.perf_counter() - yielded > YIELD_EVERY_S:
                    # The engine is synchronous: without a turn of the event loop now and then
                    # a long batch starves the consumer's heartbeats (and the other partitions'
                    # transactions) and the group expels us.
                    await asyncio.sleep(0)
                    yielded = time.perf_counter()
        # Bodies to read back are read in one pass, before the sweep looks at engagements
        # (as if each had been read on the spot), then once more for the sweep's own.
        await self._read_bodies(txn)
        txn.outputs += self.engine.sweep(txn.state)
        await self._read_bodies(txn)
        await self._flush(txn)
        # what this share left in state stays out of the collector's passes from now on
        self._freezer.work_done()
        return offsets

    async def _flush(self, txn: _Txn) -> None:
        """Send outputs and the partition's changelog writes (inside the open transaction),
        in ready-made batches (``core.batches``)."""
        outgoing: list[Outgoing] = []
        for out in txn.outputs:
            assert isinstance(out, Emit)
            serde = serde_for(type(out.event))
            if out.output == "threads":
                topic = self.topics.threads
                txn.threads_sent += 1
            else:
                topic = self.topics.engagements
            headers = serde.headers(out.event.event_type)
            outgoing.append((topic, None, out.key.encode(), serde.encode(out.event), headers))
        self.stats.records_out += len(txn.outputs)
        txn.outputs.clear()
        state = txn.state
        changes = state.take_changes()
        self.stats.records_out += len(changes)
        for (store, key), value in changes.items():
            topic = self.topics.changelogs[store]
            outgoing.append(
                (topic, state.partition, key.encode("utf-8", "surrogateescape"), value, [])
            )
        await txn.sender.send_all(outgoing)

    # --- records --------------------------------------------------------------------------

    async def _handle_record(self, txn: _Txn, rec: Record) -> None:
        topic = rec.topic
        state = txn.state
        stage = "decode"
        try:
            steps: list[Step] = []
            if topic == self.topics.messages:
                fields = serde_for(MessageEvent).decode_fields(
                    rec.value, rec.headers, MESSAGE_FIELDS
                )
                stage = "process"
                steps = self.engine.on_message(state, rec.offset, MessageIn.of_record(fields))
            elif topic == self.topics.bodies:
                head = BODY_HEAD_FIELDS
                fields = serde_for(BodyEvent).decode_fields(rec.value, rec.headers, head)
                stage = "process"
                steps = self.engine.on_body(state, rec.offset, BodyHead.of_record(fields))
                if steps:  # its engagement reads it: from here, not from the topic
                    txn.bodies[rec.offset] = rec
            elif topic == self.topics.crm_outbound:
                outbound = serde_for(OutboundEvent).decode(rec.value, rec.headers)
                stage = "repartition"
                await self._repartition(txn, rec, outbound)
            elif topic == self.topics.crm_by_inbox:
                outbound = serde_for(OutboundEvent).decode(rec.value, rec.headers)
                stage = "process"
                steps = self.engine.on_crm(state, outbound)
            elif topic == self.topics.engagement_deletes:
                command = serde_for(EngagementEvent).decode(rec.value, rec.headers)
                stage = "process"
                steps = self.engine.on_delete(state, command)
            txn.outputs += steps
        except Exception as exc:  # one bad record never stops the partition
            self.stats.dead_lettered += 1
            self.stats.counts[f"dead_letter:{topic}"] += 1
            await send_to_dead_letter(txn.producer, self.topics.dead_letter, rec, stage, exc)

    async def _repartition(self, txn: _Txn, rec: Record, ev: OutboundEvent) -> None:
        """crm.outbound -> crm-by-inbox: to the inbox's partition, or to all of them."""
        headers = list(rec.headers or ())
        if ev.inbox_id:
            await txn.producer.send(
                self.topics.crm_by_inbox, rec.value, key=ev.inbox_id.encode(), headers=headers
            )
            self.stats.counts["crm_routed"] += 1
            return
        partitions = await txn.producer.partitions_for(self.topics.crm_by_inbox)
        for p in sorted(partitions):
            await txn.producer.send(
                self.topics.crm_by_inbox,
                rec.value,
                key=ev.message_id.encode(),
                partition=p,
                headers=[*headers, (BROADCAST_HEADER, b"1")],
            )
        self.stats.counts["crm_broadcast"] += 1

    async def _read_bodies(self, txn: _Txn) -> None:
        """Finish every ``BodyRead`` among the outputs with its body, read back from
        inbox.bodies in offset order (a held reply's body never entered state)."""
        reads = [step for step in txn.outputs if isinstance(step, BodyRead)]
        if not reads:
            return
        at_hand = txn.bodies
        bodies = {
            r.offset: self._decode_body(at_hand[r.offset]) for r in reads if r.offset in at_hand
        }
        missing = [r.offset for r in reads if r.offset not in bodies]
        if missing:
            bodies.update(await self._fetch_bodies(txn.state.partition, missing))
        txn.outputs = [
            self.engine.finish(txn.state, step, bodies.get(step.offset))
            if isinstance(step, BodyRead)
            else step
            for step in txn.outputs
        ]

    async def _fetch_bodies(self, partition: int, offsets: list[int]) -> dict[int, Body | None]:
        """The bodies at ``offsets`` of one inbox.bodies partition: one sequential read per
        run of nearby offsets, a seek across gaps. Gone (retention) or unreadable: None."""
        found: dict[int, Body | None] = {}
        wanted = sorted(set(offsets))
        tp = TopicPartition(self.topics.bodies, partition)
        async with self._reader_lock:  # one reader, shared by the partitions' transactions
            if self._body_reader is None:
                # A fetch at the partition's end waits fetch_max_wait_ms for more data, and
                # a seek back must wait for that fetch to return (aiokafka sends one fetch at
                # a time per broker): with the default 500 ms, a read-back that touched the
                # end cost half a second a seek. Paused between read-backs, so the short
                # wait never turns into polling.
                self._body_reader = make_consumer(
                    self.settings.kafka, group_id=None, fetch_max_wait_ms=5
                )
                await self._body_reader.start()
            reader = self._body_reader
            reader.assign([tp])
            i = 0
            while i < len(wanted):
                reader.seek(tp, wanted[i])
                while i < len(wanted):
                    try:
                        batch = await asyncio.wait_for(
                            reader.getmany(tp, timeout_ms=30_000, max_records=BODY_READ_RECORDS),
                            timeout=35,
                        )
                    except Exception as exc:  # a timeout, or the topic went away
                        log.warning("bodies at %s from %d unavailable: %s", tp, wanted[i], exc)
                        batch = {}
                    records = batch.get(tp, [])
                    if not records:
                        found[wanted[i]] = None  # nothing there: count it gone, go on after it
                        i += 1
                        break
                    for rec in records:
                        while i < len(wanted) and wanted[i] < rec.offset:
                            found[wanted[i]] = None  # deleted by retention before we came
                            i += 1
                        if i < len(wanted) and wanted[i] == rec.offset:
                            found[rec.offset] = self._decode_body(rec)
                            i += 1
                    if i < len(wanted) and wanted[i] - records[-1].offset > BODY_READ_RECORDS:
                        break  # a gap: seek rather than read through it
            reader.pause(tp)  # no prefetching until the next read-back assigns it again
        return found

    @staticmethod
    def _decode_body(rec: Record) -> Body | None:
        try:
            return body_of_record(
                serde_for(BodyEvent).decode_fields(rec.value, rec.headers, BODY_FIELDS)
            )
        except Exception as exc:  # unreadable: log the engagement without a body
            log.warning("body at %s@%d unreadable: %s", rec.topic, rec.offset, exc)
            return None


@dataclass
class _Txn:
    """One input partition's share of a batch: its producer (transactional with exactly
    once), its state, and the outputs queued in order (a ``BodyRead`` until its body is read)."""

    producer: AIOKafkaProducer
    state: PartitionState
    partitions: dict[tuple[str, bytes | None], int]  # the key -> partition cache, shared
    outputs: list[Step] = field(default_factory=list)
    # inbox.bodies records of this share that an engagement reads (by offset)
    bodies: dict[int, Record] = field(default_factory=dict)
    threads_sent: int = 0  # thread events sent in this transaction
    sender: BatchSender = field(init=False)

    def __post_init__(self) -> None:
        self.sender = BatchSender(self.producer, self.partitions)


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``tasks``; an exception one of them raised (a bug: transactions catch their
    own failures) is raised here, in the loop, instead of vanishing with the task."""
    if tasks:
        await asyncio.gather(*tasks)


#: How many inbox.bodies records one read-back fetch takes, and the gap it seeks across.
BODY_READ_RECORDS = 500


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

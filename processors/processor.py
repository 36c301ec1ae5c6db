"""The exactly-once stream processor: threads, CRM replies, retention.

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
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced

from inboxstream.core.kafka import client_options, ensure_topics, make_consumer, send_to_dead_letter
from inboxstream.core.settings import Settings
from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.exceptions import TopologyError
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.matcher import (
    Match,
    build_engagement,
    engagement_id,
    find_match,
    lifecycle_event_id,
)
from inboxstream.processors.retention import (
    BODY_TTL_MS,
    DELETED_PURGE_MS,
    HOUR_MS,
    METADATA_TTL_MS,
    REPLY_HOLD_MS,
    expired,
)
from inboxstream.processors.state import PartitionState, message_key, restore
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
)
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
    max_records: int = 1000
    fetch_timeout_ms: int = 200
    # False only for the benchmark's baseline: the same loop with at-least-once commits
    # (outputs flushed, then offsets committed; a crash in between duplicates output).
    exactly_once: bool = True
    # Test hook: sleep this long inside each transaction after the outputs were sent, and call
    # ``on_in_transaction`` first, so a test can kill the process with a transaction open.
    pause_in_transaction_s: float = 0.0
    # How long the group waits for a silent instance before giving its partitions to the others
    # (a frozen or partitioned instance; heartbeats go every third of it, at most every 3 s).
    # Tests shorten it; the broker's group.min.session.timeout.ms (6 s by default) is the floor.
    session_timeout_ms: int = 10_000


@dataclass
class ProcessorStats:
    batches: int = 0
    records: int = 0
    aborted: int = 0
    dead_lettered: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0  # wall time spent in batches (fetch waits excluded)
    first_batch_at: float = 0.0  # perf_counter() when the first batch started
    last_batch_at: float = 0.0  # and when the last one ended


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.processor.lock:
            gone = {tp.partition for tp in revoked}
            for p in gone:
                self.processor.states.pop(p, None)
                producer = self.processor._producers.pop(p, None)
                if producer is not None:
                    await producer.stop()
            if gone:
                log.info("%s: partitions %s revoked", self.processor.name, sorted(gone))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.processor.lock:
            await self.processor.restore_partitions({tp.partition for tp in assigned})


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
        self.on_in_transaction: Callable[[], Awaitable[None] | None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # The producer of the partition being handled: with exactly-once, one transactional
        # producer per owned input partition (``<group>-p<N>``), as Kafka Streams does per task:
        # whoever takes partition N over fences every earlier owner of it, zombie or crashed.
        self._producer: AIOKafkaProducer | None = None
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._plain_producer: AIOKafkaProducer | None = None
        self._body_reader: AIOKafkaConsumer | None = None
        self._outputs: list[tuple[str, str, Event, str]] = []

    # --- lifecycle ------------------------------------------------------------------------

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
            compression_type="lz4",
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
            for _ in range(50):
                parts = self._consumer.partitions_for_topic(topic)
                if parts:
                    break
                await self._consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
            counts[topic] = len(parts or ())
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
        self, stop: asyncio.Event | None = None, *, idle_exit_s: float | None = None
    ) -> ProcessorStats:
        """Process until ``stop`` is set, or until nothing came for ``idle_exit_s`` seconds."""
        assert self._consumer is not None
        last_data = time.monotonic()
        while stop is None or not stop.is_set():
            batch = await self._fetch()
            if batch:
                last_data = time.monotonic()
                await self._process_batch(batch)
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
        return self.stats

    async def _fetch(self) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records``: getmany hands back whatever one fetch brought (often a few
        records per partition), so top it up from what is already buffered. Bigger batches
        mean fewer transactions, which is where exactly-once costs."""
        assert self._consumer is not None
        batch: dict[TopicPartition, list[Record]] = await self._consumer.getmany(
            timeout_ms=self.config.fetch_timeout_ms, max_records=self.config.max_records
        )
        total = sum(len(r) for r in batch.values())
        for _ in range(20):
            if not batch or total >= self.config.max_records:
                break
            more = await self._consumer.getmany(
                timeout_ms=5, max_records=self.config.max_records - total
            )
            if not more:
                break
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                total += len(records)
        return batch

    # --- one batch ------------------------------------------------------------------------

    async def _process_batch(self, batch: dict[TopicPartition, list[Record]]) -> None:
        async with self.lock:
            # The assignment may have changed while we waited for the lock. Each partition's
            # share goes in its own transaction (its own producer, see the module docstring).
            by_partition: dict[int, dict[TopicPartition, list[Record]]] = {}
            for tp, records in batch.items():
                if tp.partition in self.states:
                    by_partition.setdefault(tp.partition, {})[tp] = records
            for p in sorted(by_partition):
                started = time.perf_counter()
                self.stats.first_batch_at = self.stats.first_batch_at or started
                if self.config.exactly_once:
                    await self._process_transaction(p, by_partition[p])
                else:
                    await self._process_at_least_once(by_partition[p])
                self.stats.busy_s += time.perf_counter() - started
                self.stats.last_batch_at = time.perf_counter()

    async def _process_transaction(
        self, partition: int, batch: dict[TopicPartition, list[Record]]
    ) -> None:
        """One input partition's share of the batch, in that partition's transaction."""
        self._producer = self._producers[partition]
        try:
            async with self._producer.transaction():
                offsets = await self._handle_batch(batch)
                if self.config.pause_in_transaction_s:
                    # the outputs are in the log, uncommitted, when the hook fires
                    await self._producer.flush()
                    if self.on_in_transaction is not None:
                        maybe = self.on_in_transaction()
                        if maybe is not None:
                            await maybe
                    await asyncio.sleep(self.config.pause_in_transaction_s)
                if offsets:
                    await self._producer.send_offsets_to_transaction(offsets, self.config.group_id)
        except Exception as exc:
            if not (isinstance(exc, ProducerFenced) or _unusable(self._producer)):
                self.stats.aborted += 1
                log.exception(
                    "%s: batch of partition %d aborted; restoring and rewinding",
                    self.name,
                    partition,
                )
                await self._rewind({partition})
                await asyncio.sleep(1.0)
                return
            # A newer owner of this partition exists (we were expelled from the group and the
            # rebalance has not reached us yet): its transaction is the one that counts. Forget
            # the partition; our next assignment restores what is committed. Never retry with
            # this producer, and never replace it: a new one would fence the rightful owner.
            self.stats.counts["fenced"] += 1
            log.warning("%s: fenced on partition %d (%r); dropping it", self.name, partition, exc)
            self.states.pop(partition, None)
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await producer.stop()
            return
        self.stats.batches += 1

    async def _process_at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Baseline for the benchmark only: no transaction, commit after the outputs flushed."""
        assert self._plain_producer is not None and self._consumer is not None
        self._producer = self._plain_producer
        offsets = await self._handle_batch(batch)
        await self._producer.flush()
        if offsets:
            await self._consumer.commit(offsets)
        self.stats.batches += 1

    async def _rewind(self, partitions: set[int]) -> None:
        """After an abort: state and positions back to what the last commit says."""
        assert self._consumer is not None
        for p in partitions:
            self.states.pop(p, None)
        self._outputs.clear()
        await self.restore_partitions(partitions)
        for tp in self._consumer.assignment():
            if tp.partition not in partitions:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _handle_batch(
        self, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, int]:
        assert self._producer is not None and self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        # Messages first: a body in the same batch then finds its message.
        order = {self.topics.messages: 0, self.topics.crm_by_inbox: 1}
        for tp in sorted(batch, key=lambda t: (order.get(t.topic, 2), t.topic, t.partition)):
            state = self.states[tp.partition]
            for rec in batch[tp]:
                await self._handle_record(state, rec)
                offsets[tp] = rec.offset + 1
                self.stats.records += 1
        partitions = {tp.partition for tp in batch}
        for p in sorted(partitions):
            await self._sweep(self.states[p])
        await self._flush(partitions)
        return offsets

    async def _flush(self, partitions: set[int]) -> None:
        """Send outputs and the partitions' changelog writes (inside the open transaction)."""
        assert self._producer is not None
        for topic, key, event, event_type in self._outputs:
            serde = serde_for(type(event))
            await self._producer.send(
                topic, serde.encode(event), key=key.encode(), headers=serde.headers(event_type)
            )
        self._outputs.clear()
        for p in sorted(partitions):
            for (store, key), value in self.states[p].take_changes().items():
                await self._producer.send(
                    self.topics.changelogs[store],
                    value,
                    key=key.encode("utf-8", "surrogateescape"),
                    partition=p,
                )

    def _emit(self, topic: str, key: str, event: Event, event_type: str) -> None:
        self._outputs.append((topic, key, event, event_type))
        self.stats.counts[f"out:{event_type}"] += 1

    # --- records --------------------------------------------------------------------------

    async def _handle_record(self, state: PartitionState, rec: Record) -> None:
        assert self._producer is not None
        topic = rec.topic
        stage = "decode"
        try:
            if topic == self.topics.messages:
                message = serde_for(MessageEvent).decode(rec.value, rec.headers)
                stage = "process"
                await self._on_message(state, rec, message)
            elif topic == self.topics.bodies:
                body = serde_for(BodyEvent).decode(rec.value, rec.headers)
                stage = "process"
                await self._on_body(state, rec, body)
            elif topic == self.topics.crm_outbound:
                outbound = serde_for(OutboundEvent).decode(rec.value, rec.headers)
                stage = "repartition"
                await self._repartition(rec, outbound)
            elif topic == self.topics.crm_by_inbox:
                outbound = serde_for(OutboundEvent).decode(rec.value, rec.headers)
                stage = "process"
                await self._on_crm(state, outbound)
            elif topic == self.topics.engagement_deletes:
                command = serde_for(EngagementEvent).decode(rec.value, rec.headers)
                stage = "process"
                self._on_delete(state, command)
        except Exception as exc:  # one bad record never stops the partition
            self.stats.dead_lettered += 1
            self.stats.counts[f"dead_letter:{topic}"] += 1
            await send_to_dead_letter(self._producer, self.topics.dead_letter, rec, stage, exc)

    async def _on_message(self, state: PartitionState, rec: Record, ev: MessageEvent) -> None:
        if ev.event_type != "message.new":
            self.stats.counts["messages_ignored_type"] += 1
            return
        inbox = ev.inbox_id
        observed = _ms(ev.observed_at) or 0
        state.advance(observed)
        if state.knows(inbox, ev.event_id):
            self.stats.counts["messages_duplicate"] += 1
            return
        entry = MessageEntry(
            seq=rec.offset,
            event_id=ev.event_id,
            message_id=ev.message_id,
            references=list(ev.references),
            in_reply_to=list(ev.in_reply_to),
            subject=ev.subject,
            date_ms=_ms(ev.date or ev.internal_date),
            observed_ms=observed,
        )
        events, changed = state.inbox(inbox).add(entry)
        for e in changed:
            state.record_message(inbox, e)
        for event in events:
            self._emit(self.topics.threads, inbox, event, event.event_type)
        key = message_key(inbox, ev.event_id)
        orphan = state.pending.get(key)  # its body came first: we hold only the body's offset
        body_at = orphan.get("body_at") if orphan else None
        if (
            not (ev.in_reply_to or ev.references)
            # Replies are incoming mail (the FAQ: "monitor incoming mail for replies"); the
            # owner's own follow-ups filed in the sent folder are threaded, never engagements.
            or ev.folder_role == "sent"
            or engagement_id(inbox, ev.message_id) in state.engagements  # a copy, logged
        ):
            if orphan is not None:
                state.put("pending", key, None)
            return
        reply = {
            "inbox_id": inbox,
            "event_id": ev.event_id,
            "message_id": ev.message_id,
            "in_reply_to": list(ev.in_reply_to),
            "references": list(ev.references),
            "subject": ev.subject,
            "from_email": ev.from_.email if ev.from_ else None,
            "from_name": ev.from_.name if ev.from_ else None,
            "observed_ms": observed,
        }
        match = find_match(ev.message_id, ev.in_reply_to, ev.references, state.crm.__contains__)
        held = {
            "reply": reply,
            "since_ms": observed,
            "match": _match_json(match),
            "body_at": body_at,
        }
        state.put("pending", key, held)
        if match is not None and body_at is not None:
            await self._emit_engagement(state, key)

    async def _on_body(self, state: PartitionState, rec: Record, ev: BodyEvent) -> None:
        key = message_key(ev.inbox_id, ev.event_id)
        held = state.pending.get(key)
        if expired(_ms(ev.observed_at) or 0, state.watermark_ms, BODY_TTL_MS):
            self.stats.counts["bodies_too_old"] += 1
            return
        if held is None:
            if not state.knows(ev.inbox_id, ev.event_id):
                # Its message is not processed yet (two topics, no order between them): hold
                # the body's offset, never the body, until the message comes.
                since = _ms(ev.observed_at) or state.watermark_ms
                state.put("pending", key, {"body_at": rec.offset, "since_ms": since})
                self.stats.counts["bodies_before_message"] += 1
                return
            # Not a reply candidate: bodies of threads the CRM never sent or logged do not
            # enter state or output.
            self.stats.counts["bodies_dropped"] += 1
            return
        if "reply" not in held:
            return  # a second copy of an early body
        body = _body_json(ev)
        if held["match"] is not None:
            await self._emit_engagement(state, key, body)
        else:
            # Not known to be a CRM thread yet: keep only where the body is (the inbox.bodies
            # offset), never the body itself; a later match reads it back from the topic.
            state.put("pending", key, held | {"body_at": rec.offset})

    async def _repartition(self, rec: Record, ev: OutboundEvent) -> None:
        """crm.outbound -> crm-by-inbox: to the inbox's partition, or to all of them."""
        assert self._producer is not None
        headers = list(rec.headers or ())
        if ev.inbox_id:
            await self._producer.send(
                self.topics.crm_by_inbox, rec.value, key=ev.inbox_id.encode(), headers=headers
            )
            self.stats.counts["crm_routed"] += 1
            return
        partitions = await self._producer.partitions_for(self.topics.crm_by_inbox)
        for p in sorted(partitions):
            await self._producer.send(
                self.topics.crm_by_inbox,
                rec.value,
                key=ev.message_id.encode(),
                partition=p,
                headers=[*headers, (BROADCAST_HEADER, b"1")],
            )
        self.stats.counts["crm_broadcast"] += 1

    async def _on_crm(self, state: PartitionState, ev: OutboundEvent) -> None:
        crm = {
            "kind": ev.kind,
            "inbox_id": ev.inbox_id,
            "contact_email": ev.contact_email,
            "contact_name": ev.contact_name,
            "subject": ev.subject,
            "crm_ref": ev.crm_ref,
            "sequence_id": ev.sequence_id,
        }
        state.put("crm", ev.message_id, crm)
        for key in state.pending_mentioning(ev.message_id):
            held = state.pending[key]
            if "reply" not in held or held["match"] is not None:
                continue
            reply = held["reply"]
            match = find_match(
                reply["message_id"],
                reply["in_reply_to"],
                reply["references"],
                state.crm.__contains__,
            )
            state.put("pending", key, held | {"match": _match_json(match)})
            if held["body_at"] is not None:
                await self._emit_engagement(state, key)

    async def _emit_engagement(
        self, state: PartitionState, key: str, body: dict[str, Any] | None = None
    ) -> None:
        held = state.pending.get(key)
        if held is None or held.get("match") is None:
            return
        reply = held["reply"]
        inbox = reply["inbox_id"]
        eng_id = engagement_id(inbox, reply["message_id"])
        state.put("pending", key, None)
        if eng_id in state.engagements:
            return
        match = Match(held["match"]["crm_message_id"], held["match"]["matched_by"])
        if body is None and held["body_at"] is not None:
            body = await self._read_body(state.partition, held["body_at"])
        entry = state.inbox(inbox).entries.get(reply["event_id"])
        event = build_engagement(
            inbox_id=inbox,
            reply=reply,
            body=body,
            crm=state.crm.get(match.crm_message_id, {}),
            match=match,
            thread_id=entry.thread_id if entry else None,
            occurred_at=_dt(reply["observed_ms"]),
        )
        state.put(
            "engagements",
            eng_id,
            {
                "inbox_id": inbox,
                "message_id": reply["message_id"],
                "crm_message_id": match.crm_message_id,
                "crm_kind": event.crm_kind,
                "created_ms": reply["observed_ms"],
                "body_expired": body is None,
                "deleted_ms": None,
            },
        )
        self._emit(self.topics.engagements, inbox, event, event.event_type)

    async def _read_body(self, partition: int, offset: int) -> dict[str, Any] | None:
        """Read a held reply's body back from inbox.bodies (it never entered state)."""
        if self._body_reader is None:
            self._body_reader = make_consumer(self.settings.kafka, group_id=None)
            await self._body_reader.start()
        tp = TopicPartition(self.topics.bodies, partition)
        self._body_reader.assign([tp])
        self._body_reader.seek(tp, offset)
        try:
            rec = await asyncio.wait_for(self._body_reader.getone(tp), timeout=30)
            ev = serde_for(BodyEvent).decode(rec.value, rec.headers)
        except Exception as exc:  # gone by retention, or unreadable: log it without a body
            log.warning("body at %s@%d unavailable: %s", tp, offset, exc)
            self.stats.counts["bodies_unavailable"] += 1
            return None
        if rec.offset != offset:
            self.stats.counts["bodies_unavailable"] += 1
            return None
        return _body_json(ev)

    def _on_delete(self, state: PartitionState, cmd: EngagementEvent) -> None:
        if cmd.event_type != "engagement.deleted":
            raise ValueError(f"engagement-deletes takes engagement.deleted, got {cmd.event_type}")
        held = state.engagements.get(cmd.engagement_id)
        if held is None or held["deleted_ms"] is not None:
            self.stats.counts["deletes_unknown_or_repeated"] += 1
            return
        deleted_ms = _ms(cmd.occurred_at) or state.watermark_ms
        state.put("engagements", cmd.engagement_id, held | {"deleted_ms": deleted_ms})
        self._emit(
            self.topics.engagements,
            held["inbox_id"],
            self._lifecycle(cmd.engagement_id, held, "engagement.deleted", deleted_ms),
            "engagement.deleted",
        )

    def _lifecycle(self, eng_id: str, held: dict[str, Any], kind: str, at_ms: int) -> Event:
        return EngagementEvent(
            event_id=lifecycle_event_id(eng_id, kind),
            event_type=kind,
            engagement_id=eng_id,
            inbox_id=held["inbox_id"],
            message_id=held["message_id"],
            crm_message_id=held["crm_message_id"],
            crm_kind=held.get("crm_kind", "sent"),
            occurred_at=_dt(at_ms),
        )

    # --- retention ------------------------------------------------------------------------

    async def _sweep(self, state: PartitionState) -> None:
        """Event-time retention for one partition (see ``processors.retention``)."""
        wm = state.watermark_ms
        for key, held in sorted(state.pending.items()):
            if not expired(held["since_ms"], wm, REPLY_HOLD_MS):
                continue
            if held.get("match") is not None:
                # matched but its body never came: log the engagement without a body
                await self._emit_engagement(state, key)
            else:
                state.put("pending", key, None)
                self.stats.counts["pending_expired"] += 1
        for eng_id, held in sorted(state.engagements.items()):
            if held["deleted_ms"] is not None and expired(held["deleted_ms"], wm, DELETED_PURGE_MS):
                state.put("engagements", eng_id, None)
            elif not held["body_expired"] and expired(held["created_ms"], wm, BODY_TTL_MS):
                state.put("engagements", eng_id, held | {"body_expired": True})
                expiry_ms = held["created_ms"] + BODY_TTL_MS
                self._emit(
                    self.topics.engagements,
                    held["inbox_id"],
                    self._lifecycle(eng_id, held, "body.expired", expiry_ms),
                    "body.expired",
                )
        # Metadata: swept at most once per event-time hour (a full scan of the thread index).
        bucket = wm // HOUR_MS
        if bucket != state.swept_bucket:
            state.swept_bucket = bucket
            for inbox, index in list(state.threads.items()):
                for event_id, entry in list(index.entries.items()):
                    if expired(entry.observed_ms, wm, METADATA_TTL_MS):
                        state.drop_message(inbox, event_id)


def _unusable(producer: AIOKafkaProducer) -> bool:
    """Whether the producer hit a fatal error (fenced, in practice) in an earlier call.

    aiokafka raises ProducerFenced only to the call that met it - often its background sender,
    where nobody awaits it; the zombie's next calls on that producer then fail with
    IllegalOperation ("Not in the middle of a transaction") or a state assertion instead. The
    transaction manager keeps the fatal state (no public accessor)."""
    txn = getattr(producer, "_txn_manager", None)
    return bool(txn is not None and txn.is_fatal_error())


def _body_json(ev: BodyEvent) -> dict[str, Any]:
    return {
        "text": ev.text,
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in ev.attachments
        ],
    }


def _match_json(match: Match | None) -> dict[str, str] | None:
    if match is None:
        return None
    return {"crm_message_id": match.crm_message_id, "matched_by": match.matched_by}


async def run_processor(
    settings: Settings,
    config: ProcessorConfig | None = None,
    *,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
) -> ProcessorStats:
    """Start one instance, run it, stop it (what the CLI and the tests call)."""
    processor = StreamProcessor(settings, config)
    await processor.start()
    try:
        return await processor.run(stop, idle_exit_s=idle_exit_s)
    finally:
        await processor.stop()

"""One input partition's share of a batch, from consumed records to the records to send.

The record path of the stream processor: decode each input, run it through the ``Engine``,
read back the bodies engagements need, run the retention sweep, and encode the outputs and the
partition's changelog writes. It holds the partitions' state and reads Kafka only to restore
that state and to read a held reply's body back; it never writes. The driver
(``processors.processor``) owns consumption, transactions and every send: it hands a share
over, sends what comes back inside the share's transaction, and dead-letters the records
listed as failed.

Kept apart so it can run in a process of its own (``processors.engine_process``) while the
driver's loop fetches, sends and commits on the other core, or in the driver's process
(``ProcessorConfig.engine_processes=0``): the same code and the same outputs either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from inboxstream.core.batches import Headers, Outgoing
from inboxstream.core.gc_tuning import SurvivorFreezer
from inboxstream.core.kafka import Failure, make_consumer
from inboxstream.core.settings import KafkaSettings
from inboxstream.processors.body_cache import BODY_CACHE_BYTES, BodyCache
from inboxstream.processors.engine import BodyRead, Emit, Engine, Step
from inboxstream.processors.inputs import (
    BODY_FIELDS,
    BODY_HEAD_FIELDS,
    MESSAGE_FIELDS,
    OUTBOUND_FIELDS,
    BodyHead,
    MessageIn,
    body_of_record,
    crm_of_record,
)
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.records import Body
from inboxstream.processors.state import PartitionState, message_key, restore
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    MessageEvent,
    OutboundEvent,
    ThreadEvent,
)
from inboxstream.schemas.serde import AvroSerde, serde_for

log = logging.getLogger(__name__)

#: How long the record loop may hold the event loop before giving it a turn (heartbeats, fetches).
YIELD_EVERY_S = 0.05
#: How many inbox.bodies records one read-back fetch takes, and the gap it seeks across.
BODY_READ_RECORDS = 500


class Incoming(Protocol):
    """What the record path reads of a consumed record (an aiokafka ``ConsumerRecord``, or
    a ``Consumed`` tuple)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...


#: A consumed record as the record path works on it, and as it crosses to an engine process:
#: topic, partition, offset, value, headers. A plain tuple: a named tuple pickles through its
#: Python-level ``__getnewargs__`` and ``__new__`` (measured 4.2 us a record both ways,
#: against 1.2 plain), and the compiled code unpacks a tuple natively where it would look
#: each attribute up (building a ``Consumed`` per record was 0.8 us an event in the engine
#: process alone).
Row = tuple[str, int, int, bytes | None, Headers]


def row_of(rec: Incoming) -> Row:
    return (rec.topic, rec.partition, rec.offset, rec.value, rec.headers)


class Consumed(NamedTuple):
    """A consumed record by name (tests and tools build them; the record path takes any
    ``Incoming``)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Headers


class ShareOut(NamedTuple):
    """What a share gave: the records to send in its transaction (outputs, then changelog
    writes), the inputs that failed (index in the share, stage, why), and how many thread
    events are among the outputs."""

    outgoing: list[Outgoing]
    failures: list[tuple[int, str, Failure]]
    outputs: int
    threads: int


class RecordPath:
    """The partitions' state and the work on their shares (module docstring). ``counts`` says
    what the engine did (duplicates, drops, expiries, outputs by type)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: ProcessorTopics,
        algorithm: Algorithm = "rfc5256",
        counts: Counter[str] | None = None,
        body_cache_bytes: int = BODY_CACHE_BYTES,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.algorithm = algorithm
        self.states: dict[int, PartitionState] = {}
        self.engine = Engine(counts)
        self._freezer = SurvivorFreezer()
        # the bodies whose offsets state holds, so a read back rarely goes to Kafka
        self.bodies = BodyCache(body_cache_bytes)
        self._body_reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()
        # Shares are taken one at a time, in the order they were handed over (the driver
        # hands a partition's next share over before the previous one committed).
        self._turn = asyncio.Lock()

    @property
    def counts(self) -> Counter[str]:
        return self.engine.counts

    @property
    def partitions(self) -> set[int]:
        return set(self.states)

    async def start(self) -> None:
        """Nothing to start in this process (the same calls as an engine process)."""

    def check(self) -> None:
        """Never gone: it lives in the driver's process."""

    async def restore(self, partitions: set[int]) -> None:
        """Read the state of ``partitions`` not held yet from their changelogs."""
        missing = partitions - set(self.states)
        if missing:
            self.states.update(
                await restore(self.kafka, self.topics.changelogs, missing, self.algorithm)
            )

    async def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.states.pop(p, None)
        self.bodies.drop(partitions)

    async def close(self) -> None:
        if self._body_reader is not None:
            await self._body_reader.stop()
            self._body_reader = None

    # --- one share ------------------------------------------------------------------------

    async def handle(self, partition: int, records: Sequence[Incoming]) -> ShareOut:
        """Partition ``partition``'s share, in the order given (messages first: a body in
        the same share then finds its message). crm.outbound is the driver's (re-keying is
        sending only) and never comes here."""
        rows = [row_of(rec) for rec in records]
        async with self._turn:
            return await self._handle(partition, rows)

    async def handle_rows(self, partition: int, rows: list[Row]) -> ShareOut:
        """``handle`` for records already in ``Row`` form (what an engine process is sent)."""
        async with self._turn:
            return await self._handle(partition, rows)

    async def _handle(self, partition: int, rows: list[Row]) -> ShareOut:
        state = self.states[partition]
        outputs: list[Step] = []
        failures: list[tuple[int, str, Failure]] = []
        at_hand: dict[int, Row] = {}  # inbox.bodies records an engagement reads
        yielded = time.perf_counter()
        for i, row in enumerate(rows):
            failed = self._handle_record(state, row, outputs, at_hand)
            if failed is not None:
                failures.append((i, *failed))
            if time.perf_counter() - yielded > YIELD_EVERY_S:
                # The engine is synchronous: without a turn of the event loop now and then
                # a long share starves the consumer's heartbeats (and the other partitions'
                # transactions) and the group expels us.
                await asyncio.sleep(0)
                yielded = time.perf_counter()
        # Bodies to read back are read in one pass, before the sweep looks at engagements
        # (as if each had been read on the spot), then once more for the sweep's own.
        outputs = await self._read_bodies(state, outputs, at_hand)
        outputs += self.engine.sweep(state)
        outputs = await self._read_bodies(state, outputs, at_hand)
        out = self._encode(state, outputs)
        # what this share left in state stays out of the collector's passes from now on
        self._freezer.work_done()
        return out._replace(failures=failures)

    def _handle_record(
        self,
        state: PartitionState,
        row: Row,
        outputs: list[Step],
        at_hand: dict[int, Row],
    ) -> tuple[str, Failure] | None:
        """One record into ``outputs``; or the stage it failed at and why."""
        topic, _, offset, value, headers = row
        stage = "decode"
        try:
            if topic == self.topics.messages:
                fields = serde_for(MessageEvent).decode_fields(value, headers, MESSAGE_FIELDS)
                stage = "process"
                outputs += self.engine.on_message(state, offset, MessageIn.of_record(fields))
            elif topic == self.topics.bodies:
                head = BODY_HEAD_FIELDS
                fields = serde_for(BodyEvent).decode_fields(value, headers, head)
                stage = "process"
                steps = self.engine.on_body(state, offset, BodyHead.of_record(fields))
                if steps:  # its engagement reads it: from here, not from the topic
                    at_hand[offset] = row
                    outputs += steps
                elif self.bodies.budget:
                    held = state.pending.get(message_key(fields["inbox_id"], fields["event_id"]))
                    if held is not None and held.body_at == offset:
                        # state kept its offset: an engagement may read it back later
                        self.bodies.put(state.partition, offset, value, headers)
            elif topic == self.topics.crm_by_inbox:
                crm = serde_for(OutboundEvent).decode_fields(value, headers, OUTBOUND_FIELDS)
                stage = "process"
                outputs += self.engine.on_crm_record(state, crm["message_id"], crm_of_record(crm))
            elif topic == self.topics.engagement_deletes:
                command = serde_for(EngagementEvent).decode(value, headers)
                stage = "process"
                outputs += self.engine.on_delete(state, command)
            else:
                raise ValueError(f"the record path does not take {topic}")
        except Exception as exc:  # one bad record never stops the partition
            return stage, Failure.of(exc)
        return None

    def _encode(self, state: PartitionState, outputs: list[Step]) -> ShareOut:
        """Outputs, then the partition's changelog writes, as records ready to send."""
        outgoing: list[Outgoing] = []
        threads = 0
        thread_serde: AvroSerde[Any] = serde_for(ThreadEvent)
        engagement_serde: AvroSerde[Any] = serde_for(EngagementEvent)
        serde: AvroSerde[Any]
        for out in outputs:
            assert isinstance(out, Emit)
            if out.output == "threads":
                topic, serde = self.topics.threads, thread_serde
                threads += 1
            else:
                topic, serde = self.topics.engagements, engagement_serde
            headers = serde.headers(out.record["event_type"])
            encoded = serde.encode_record(out.record)
            outgoing.append((topic, None, out.key.encode(), encoded, headers))
        changes = state.take_changes()
        for (store, key), value in changes.items():
            topic = self.topics.changelogs[store]
            outgoing.append(
                (topic, state.partition, key.encode("utf-8", "surrogateescape"), value, [])
            )
        return ShareOut(outgoing, [], len(outputs), threads)

    # --- bodies read back ---------------------------------------------------------------

    async def _read_bodies(
        self, state: PartitionState, outputs: list[Step], at_hand: dict[int, Row]
    ) -> list[Step]:
        """Finish every ``BodyRead`` among ``outputs`` with its body: from the share in
        hand, else read back from inbox.bodies in offset order (a held reply's body never
        entered state)."""
        reads = [step for step in outputs if isinstance(step, BodyRead)]
        if not reads:
            return outputs
        bodies: dict[int, Body | None] = {}
        missing: list[int] = []
        for r in reads:
            if (row := at_hand.get(r.offset)) is not None:
                bodies[r.offset] = self._decode_body(row)
            elif (kept := self.bodies.take(state.partition, r.offset)) is not None:
                value, headers = kept
                row = (self.topics.bodies, state.partition, r.offset, value, headers)
                bodies[r.offset] = self._decode_body(row)
            else:
                missing.append(r.offset)
        if len(reads) > len(missing):
            self.counts["bodies_read_memory"] += len(reads) - len(missing)
        if missing:
            self.counts["bodies_read_kafka"] += len(missing)
            bodies.update(await self.fetch_bodies(state.partition, missing))
        return [
            self.engine.finish(state, step, bodies.get(step.offset))
            if isinstance(step, BodyRead)
            else step
            for step in outputs
        ]

    async def fetch_bodies(self, partition: int, offsets: list[int]) -> dict[int, Body | None]:
        """The bodies at ``offsets`` of one inbox.bodies partition: one sequential read per
        run of nearby offsets, a seek across gaps. Gone (retention) or unreadable: None."""
        found: dict[int, Body | None] = {}
        wanted = sorted(set(offsets))
        tp = TopicPartition(self.topics.bodies, partition)
        async with self._reader_lock:  # one reader, shared by the partitions' shares
            if self._body_reader is None:
                # A fetch at the partition's end waits fetch_max_wait_ms for more data, and
                # a seek back must wait for that fetch to return (aiokafka sends one fetch at
                # a time per broker): with the default 500 ms, a read-back that touched the
                # end cost half a second a seek. Paused between read-backs, so the short
                # wait never turns into polling.
                self._body_reader = make_consumer(self.kafka, group_id=None, fetch_max_wait_ms=5)
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
                            found[rec.offset] = self._decode_body(row_of(rec))
                            i += 1
                    if i < len(wanted) and wanted[i] - records[-1].offset > BODY_READ_RECORDS:
                        break  # a gap: seek rather than read through it
            reader.pause(tp)  # no prefetching until the next read-back assigns it again
        return found

    @staticmethod
    def _decode_body(row: Row) -> Body | None:
        topic, _, offset, value, headers = row
        try:
            return body_of_record(serde_for(BodyEvent).decode_fields(value, headers, BODY_FIELDS))
        except Exception as exc:  # unreadable: log the engagement without a body
            log.warning("body at %s@%d unreadable: %s", topic, offset, exc)
            return None

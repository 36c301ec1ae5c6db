"""A batching Kafka → ClickHouse sink.

At-least-once by construction: records are decoded and mapped, inserted in one batch, and only
then are their offsets committed. A crash between insert and commit redelivers the batch, which
the ReplacingMergeTree tables collapse by event id, so counts never double.

A record that cannot be decoded or mapped, or a row ClickHouse refuses as data, goes to the
dead-letter topic with the reason and the batch goes on. Any other ClickHouse failure is not the
record's fault: the sink keeps the batch, backs off and retries the insert, never committing
past rows that are not in the table.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import TopicPartition

from inboxstream.core.gc_tuning import SurvivorFreezer
from inboxstream.core.kafka import send_to_dead_letter
from inboxstream.core.metrics import (
    BATCH_RECORDS,
    BATCH_SECONDS,
    ERRORS,
    ROWS_INSERTED,
    error_kind,
    observe_lag,
)
from inboxstream.schemas.models import Event
from inboxstream.schemas.serde import AvroSerde, SchemaVersion
from inboxstream.sinks.avro_insert import PROJECTIONS, Buffer, container
from inboxstream.sinks.clickhouse import AvroInserter, ClickHouse
from inboxstream.sinks.exceptions import BadRowError, ClickHouseError

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    insert_retries: int = 0
    inserted_by_table: dict[str, int] = field(default_factory=dict)


#: A lingering batch is inserted once no record came for this share of ``linger_s``.
LINGER_QUIET = 1 / 3


@dataclass(frozen=True)
class _Batch:
    rows: dict[str, list[PendingRow]]
    offsets: dict[TopicPartition, int]
    records: int
    #: records whose table the engine fills from their Avro values (sinks/avro_insert.py)
    avro: dict[str, list[tuple[ConsumerRecord[bytes, bytes], SchemaVersion, int]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class PendingRow:
    """A row on its way to a table, with the record it came from (for the dead-letter)."""

    record: ConsumerRecord[bytes, bytes]
    row: Mapping[str, Any]


@dataclass
class TableSink(Generic[E]):
    """Maps one topic's events to rows of one table. ``to_rows`` takes the decoded Avro
    record (sinks/rows.py), not a model: the schema already guarantees the types."""

    topic: str
    table: str
    serde: AvroSerde[E]
    to_rows: Callable[[dict[str, Any]], list[Mapping[str, Any]]]


@dataclass
class BatchingSink:
    consumer: AIOKafkaConsumer
    dlq_producer: AIOKafkaProducer
    dlq_topic: str
    clickhouse: ClickHouse
    tables: dict[str, TableSink[Any]]
    batch_size: int = 20_000
    batch_timeout_s: float = 1.0
    #: How long a batch that got its first records waits to fill up (see ``_fetch``).
    linger_s: float = 1.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stats: SinkStats = field(default_factory=SinkStats)
    #: The consumer group, for the lag metric.
    group: str = "inboxstream-sink"
    #: Why the last insert into ClickHouse failed, until one succeeds (for ``/readyz``).
    insert_error: str | None = None
    #: The offsets this sink last committed, per partition.
    _committed: dict[TopicPartition, int] = field(default_factory=dict)
    #: Keeps what a batch allocates out of the collector's passes (``core.gc_tuning``): a
    #: batch holds ~20 objects a record until its insert is done, and young collections
    #: every 50,000 allocations walked it for nothing (bench/sink.py: 15 collections, 0.12 s
    #: of a 1.9 s run, 44 objects freed).
    _freezer: SurvivorFreezer = field(default_factory=SurvivorFreezer, repr=False)

    def readiness(self) -> str | None:
        """None while the sink takes records into ClickHouse; else why not."""
        if self.insert_error is not None:
            return f"ClickHouse refused the last insert (retrying): {self.insert_error}"
        return None

    async def run_once(self, linger: bool = True) -> int:
        """Consume, insert and commit one batch; return the number of records consumed."""
        batch = await self._collect(linger)
        if batch is None:
            return 0
        await self._flush(batch)
        return batch.records

    async def _fetch(
        self, linger: bool = True
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Up to ``batch_size`` records: the first wait is ``batch_timeout_s``; once records
        came, fetching goes on for up to ``linger_s`` while the batch is short of
        ``batch_size`` (unless ``linger`` is off: a catch-up that knows where the end is).
        A sink fed a steady stream would otherwise insert whatever one fetch held, a few
        hundred rows, and an insert has a fixed cost (~20 ms of chDB CPU here, measured: 60
        CPU-µs a row in inserts of 500 rows, 9 in inserts of 6,666) and leaves a part to
        merge; ClickHouse's own advice is thousands of rows an insert, about one a second.
        The pipelined loop collects while the previous batch inserts, so lingering costs
        latency (at most ``linger_s``), not throughput. A pause of a third of the linger
        ends it early (the end of a burst of work: its last rows need not wait the rest);
        shorter pauses do not, as upstream writes in bursts (a backfill's FETCH batches, the
        processor's transactions ~100 ms apart) and a 100 ms pause cut the batches back to
        about one burst each (measured: the sink's CPU a message went back up by half)."""
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        batches = await self.consumer.getmany(
            timeout_ms=int(self.batch_timeout_s * 1000), max_records=self.batch_size
        )
        count = sum(len(part) for part in batches.values())
        if not count or not linger or self.linger_s <= 0:
            return batches
        deadline = time.monotonic() + self.linger_s
        while count < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            quiet = min(left, self.linger_s * LINGER_QUIET)
            more = await self.consumer.getmany(
                timeout_ms=max(1, int(quiet * 1000)), max_records=self.batch_size - count
            )
            if not more:
                break  # the stream stopped (its last batch): insert now, not after the linger
            for tp, part in more.items():
                batches.setdefault(tp, []).extend(part)  # a partition's records stay in order
                count += len(part)
        return batches

    async def _collect(self, linger: bool = True) -> _Batch | None:
        """Fetch one batch, decode and map it; undecodable records are dead-lettered here."""
        batches = await self._fetch(linger)
        records = [r for part in batches.values() for r in part]
        if not records:
            return None
        observe_lag(self.group, self.consumer, batches)
        rows: dict[str, list[PendingRow]] = {}
        avro: dict[str, list[tuple[ConsumerRecord[bytes, bytes], SchemaVersion, int]]] = {}
        engine_decodes = isinstance(self.clickhouse, AvroInserter)
        for record in records:
            sink = self.tables.get(record.topic)
            if sink is None:
                continue
            if engine_decodes and sink.table in PROJECTIONS:
                found = sink.serde.writer_of(record.value, record.headers)
                if found is not None:  # else the Python path says what is wrong with it
                    avro.setdefault(sink.table, []).append((record, *found))
                    continue
            mapped = await self._map(sink, record)
            if mapped:
                rows.setdefault(sink.table, []).extend(mapped)
        batch = _Batch(rows, await self._moved_positions(), len(records), avro)
        self._freezer.work_done()
        return batch

    async def _moved_positions(self) -> dict[TopicPartition, int]:
        """Every assigned partition whose position moved past this sink's last commit.

        position() is past the last record handed out and past any transaction markers behind
        it. A partition with no record in this batch can still have moved: a fetch that held
        only the commit marker that ends it (the fetch before stopped at a size limit). Its
        position is committed too, so a transactional topic is committed to its very end and
        the group's lag reads 0, not 1 per partition forever (lag alerts, "caught up?" checks).
        """
        return self._moved(
            {tp: await self.consumer.position(tp) for tp in self.consumer.assignment()}
        )

    def _moved(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The positions past this sink's last commit of their partition."""
        return {tp: at for tp, at in positions.items() if at > self._committed.get(tp, -1)}

    async def _map(
        self, sink: TableSink[Any], record: ConsumerRecord[bytes, bytes]
    ) -> list[PendingRow]:
        """Decode and map one record in Python; a record that cannot be is dead-lettered."""
        try:
            event = sink.serde.decode_record(record.value, record.headers)
            mapped = sink.to_rows(event)
        except Exception as exc:
            await self._dead_letter(record, exc)
            return []
        return [PendingRow(record, row) for row in mapped]

    async def _flush(self, batch: _Batch) -> None:
        """Insert every row of the batch, then (and only then) commit its offsets."""
        started = time.perf_counter()
        for table, items in batch.avro.items():
            await self._insert_avro(table, items)
        for table, table_rows in batch.rows.items():
            await self._insert(table, table_rows)
        await self._commit(batch.offsets)
        self.stats.consumed += batch.records
        self.stats.batches += 1
        BATCH_RECORDS.labels("sink").observe(batch.records)
        BATCH_SECONDS.labels("sink").observe(time.perf_counter() - started)

    async def _insert_avro(
        self, table: str, items: list[tuple[ConsumerRecord[bytes, bytes], SchemaVersion, int]]
    ) -> None:
        """The engine decodes and maps the values itself, one container per writer schema.
        What it does not take (rows its SQL leaves out, or a whole container it refused)
        goes the Python way: decoded, mapped, inserted with retries, bad records dead-lettered.
        """
        assert isinstance(self.clickhouse, AvroInserter)
        groups: dict[
            str, tuple[SchemaVersion, list[ConsumerRecord[bytes, bytes]], list[Buffer]]
        ] = {}
        for record, writer, start in items:
            group = groups.setdefault(writer.fingerprint, (writer, [], []))
            group[1].append(record)
            # the bare datum: after the wire-format prefix (magic byte and schema id), if any
            value = record.value or b""
            group[2].append(memoryview(value)[start:] if start else value)
        sink = next(s for s in self.tables.values() if s.table == table)
        for writer, records, datums in groups.values():
            data = container(writer, datums)
            try:
                left = await asyncio.to_thread(
                    self.clickhouse.insert_avro, PROJECTIONS[table], data
                )
            except ClickHouseError as exc:
                log.info(
                    "%s: the engine did not take %d records (%s); mapping them in Python",
                    table,
                    len(records),
                    exc,
                )
                left = list(range(len(records)))
            taken = len(records) - len(left)
            self.stats.inserted += taken
            by_table = self.stats.inserted_by_table
            by_table[table] = by_table.get(table, 0) + taken
            ROWS_INSERTED.labels(table).inc(taken)
            pending = [row for i in left for row in await self._map(sink, records[i])]
            if pending:
                await self._insert(table, pending)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        self.stats.dead_lettered += 1
        await send_to_dead_letter(self.dlq_producer, self.dlq_topic, record, "sink", exc)

    async def _insert(self, table: str, pending: list[PendingRow]) -> None:
        """Return once every row is in the table or dead-lettered; never drop one silently.

        An outage (table missing, read-only, server down) is waited out with capped, jittered
        backoff: the batch is kept and its offsets stay uncommitted, so nothing is lost, and a
        retry after a partial insert only re-adds rows the ReplacingMergeTree collapses.
        Rows ClickHouse refuses as data are found by halving the batch and dead-lettered.
        """
        delay = self.initial_backoff_s
        while True:
            try:
                await asyncio.to_thread(self.clickhouse.insert, table, [p.row for p in pending])
                self.stats.inserted += len(pending)
                by_table = self.stats.inserted_by_table
                by_table[table] = by_table.get(table, 0) + len(pending)
                ROWS_INSERTED.labels(table).inc(len(pending))
                self.insert_error = None
                return
            except BadRowError as exc:
                if len(pending) == 1:
                    await self._dead_letter(pending[0].record, exc)
                    return
                mid = len(pending) // 2
                await self._insert(table, pending[:mid])
                await self._insert(table, pending[mid:])
                return
            except ClickHouseError as exc:
                self.stats.insert_retries += 1
                self.insert_error = str(exc)[:300]
                ERRORS.labels("sink", error_kind(exc)).inc()
                log.warning("insert into %s failed, retrying in %.1fs: %s", table, delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff_s)

    async def run(
        self, stop: asyncio.Event | None = None, idle_exit_s: float | None = None
    ) -> None:
        """Run until ``stop`` is set, or until nothing arrived for ``idle_exit_s`` seconds.

        Pipelined by one batch: batch k+1 is fetched and decoded (Python work) while batch k
        is inserted (ClickHouse's work, in a thread). Batches are flushed strictly in order and
        each commit follows its own insert, so the at-least-once contract is unchanged.
        """
        last = time.monotonic()
        inflight: asyncio.Task[None] | None = None
        try:
            while stop is None or not stop.is_set():
                batch = await self._collect()
                if inflight is not None:
                    await inflight
                    inflight = None
                if batch is not None:
                    last = time.monotonic()
                    inflight = asyncio.create_task(self._flush(batch))
                    continue
                # nothing handed out, nothing in flight: a position can only have moved
                # over transaction markers (see _moved_positions)
                await self._commit(await self._moved_positions())
                if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    return
        except BaseException:
            if inflight is not None:
                inflight.cancel()  # its offsets stay uncommitted: redelivered, never lost
                inflight = None
            raise
        finally:
            if inflight is not None:  # stopped: finish what was already consumed
                await inflight

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if offsets:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)

    async def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Consume until committed offsets reach the end of every assigned partition."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.run_once(linger=False)  # the end is known: no batch waits to fill
            assigned = self.consumer.assignment()
            if not assigned:
                continue
            ends = await self.consumer.end_offsets(list(assigned))
            positions = {tp: await self.consumer.position(tp) for tp in assigned}
            if all(positions[tp] >= ends[tp] for tp in assigned):
                await self._commit(self._moved(positions))
                return
        raise TimeoutError("sink did not catch up with the topic in time")

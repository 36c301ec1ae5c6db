"""The batching sink's rules, without Kafka or ClickHouse: a fake consumer and a ClickHouse
wrapper that fails on purpose (an outage for N calls, or rows it refuses as data)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.schemas.models import StatusEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.exceptions import BadRowError, ClickHouseError
from inboxstream.sinks.rows import status_row
from inboxstream.sinks.runner import BatchingSink, TableSink

TOPIC = "inbox.status"
TP = TopicPartition(TOPIC, 0)


class FlakyClickHouse:
    """Fails the first ``outages`` inserts as an outage; refuses any batch holding a row whose
    inbox_id is in ``bad`` as data; otherwise keeps the rows."""

    database = "db"

    def __init__(self, outages: int = 0, bad: frozenset[str] = frozenset()) -> None:
        self.outages = outages
        self.bad = bad
        self.rows: list[Mapping[str, Any]] = []
        self.calls = 0
        self.log: list[str] = []

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.calls += 1
        if self.outages > 0:
            self.outages -= 1
            raise ClickHouseError("UNKNOWN_TABLE: table is gone", retriable=True)
        if any(r["inbox_id"] in self.bad for r in rows):
            raise BadRowError("CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        self.rows.extend(rows)
        self.log.append("insert")

    def command(self, sql: str) -> None: ...

    def query(self, sql: str) -> list[dict[str, Any]]:
        return []

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        return b""

    def close(self) -> None: ...


class FakeConsumer:
    def __init__(
        self, records: list[ConsumerRecord[bytes, bytes]], log: list[str], per_fetch: int = 0
    ) -> None:
        self.records = records
        self.per_fetch = per_fetch  # at most this many a fetch (0: no cap), as a trickle
        self.fetches = 0
        self.all = list(records)
        self.log = log
        self.committed: dict[TopicPartition, int] = {}
        self.handed_out = 0  # the position: past the last record handed out

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.fetches += 1
        take = min(max_records or len(self.records), self.per_fetch or len(self.records))
        batch, self.records = self.records[:take], self.records[take:]
        if not batch:  # a real fetch waits out its timeout for records
            await asyncio.sleep(min(timeout_ms, 5) / 1000)
        if batch:
            self.handed_out = batch[-1].offset + 1
        return {TP: batch} if batch else {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def position(self, tp: TopicPartition) -> int:
        return self.handed_out

    def highwater(self, tp: TopicPartition) -> int | None:
        return 1 + max(r.offset for r in self.all) if self.all else None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append("commit")
        self.committed.update(offsets)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[Any]
    ) -> None:
        self.sent.append((topic, value, headers))


def _record(offset: int, inbox: str) -> ConsumerRecord[bytes, bytes]:
    from datetime import UTC, datetime

    event = StatusEvent(
        event_id=f"e{offset}", inbox_id=inbox, state="idle", at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    serde = serde_for(StatusEvent)
    return ConsumerRecord(
        TOPIC,
        0,
        offset,
        0,
        0,
        inbox.encode(),
        serde.encode(event),
        None,
        0,
        0,
        tuple(serde.headers()),
    )


def _sink(ch: FlakyClickHouse, records: list[ConsumerRecord[bytes, bytes]]) -> BatchingSink:
    consumer = FakeConsumer(records, ch.log)
    return BatchingSink(
        consumer=consumer,
        dlq_producer=FakeProducer(),
        dlq_topic="dlq",
        clickhouse=ch,
        tables={
            TOPIC: TableSink(
                TOPIC, "inbox_status", serde_for(StatusEvent), lambda e: [status_row(e)]
            )
        },
        batch_size=1000,
        linger_s=0.0,  # one fetch a batch, unless a test lingers
        initial_backoff_s=0.001,
        max_backoff_s=0.002,
    )


async def test_an_outage_is_retried_and_offsets_are_committed_only_after_the_insert() -> None:
    ch = FlakyClickHouse(outages=3)
    sink = _sink(ch, [_record(i, "a") for i in range(10)])
    assert await sink.run_once() == 10
    assert ch.log == ["insert", "commit"]  # no commit while the table was unreachable
    assert len(ch.rows) == 10 and sink.stats.insert_retries == 3
    assert sink.consumer.committed == {TP: 10}
    assert sink.stats.dead_lettered == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
async def test_refused_rows_are_dead_lettered_and_every_other_row_inserted(
    bad_mask: list[bool],
) -> None:
    records = [_record(i, "bad" if b else f"ok{i}") for i, b in enumerate(bad_mask)]
    ch = FlakyClickHouse(bad=frozenset({"bad"}))
    sink = _sink(ch, records)
    await sink.run_once()
    assert sorted(r["event_id"] for r in ch.rows) == sorted(
        f"e{i}" for i, b in enumerate(bad_mask) if not b
    )
    sent = sink.dlq_producer.sent
    assert len(sent) == sum(bad_mask) == sink.stats.dead_lettered
    for _topic, _value, headers in sent:
        assert dict(headers)["__connect.errors.exception.class.name"] == b"BadRowError"
    assert sink.consumer.committed == {TP: len(records)}


async def test_undecodable_records_are_dead_lettered_and_the_batch_goes_on() -> None:
    good = _record(0, "a")
    junk = ConsumerRecord(TOPIC, 0, 1, 0, 0, b"k", b"junk", None, 0, 0, ())
    ch = FlakyClickHouse()
    sink = _sink(ch, [good, junk, _record(2, "b")])
    await sink.run_once()
    assert [r["event_id"] for r in ch.rows] == ["e0", "e2"]
    assert sink.stats.dead_lettered == 1


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "Code: 27. DB::Exception: Cannot parse input: CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            BadRowError,
        ),
        ("Code: 60. DB::Exception: Table db.t does not exist. (UNKNOWN_TABLE)", ClickHouseError),
        ("Code: 164. DB::Exception: Cannot insert: readonly mode. (READONLY)", ClickHouseError),
    ],
)
def test_insert_errors_are_classified(message: str, kind: type[ClickHouseError]) -> None:
    from inboxstream.sinks.clickhouse import insert_error

    err = insert_error("embedded", RuntimeError(message))
    assert type(err) is kind
    assert err.retriable is (kind is ClickHouseError)


async def test_the_pipelined_loop_flushes_in_order_and_commits_after_each_insert() -> None:
    ch = FlakyClickHouse(outages=2)
    sink = _sink(ch, [_record(i, f"i{i}") for i in range(25)])
    sink.batch_size = 10
    await sink.run(idle_exit_s=0.0)
    assert ch.log == ["insert", "commit"] * 3  # batches of 10, 10, 5; never commit first
    assert [r["event_id"] for r in ch.rows] == [f"e{i}" for i in range(25)]
    assert sink.stats.consumed == 25 and sink.stats.batches == 3


async def test_a_cancelled_loop_does_not_commit_what_it_did_not_insert() -> None:
    ch = FlakyClickHouse(outages=10**6)  # ClickHouse never comes back
    sink = _sink(ch, [_record(i, "a") for i in range(5)])
    task = asyncio.create_task(sink.run())
    while sink.stats.insert_retries < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "commit" not in ch.log and sink.consumer.committed == {}


@pytest.mark.parametrize(("linger_s", "inserted"), [(0.0, 7), (5.0, 20)])
async def test_a_batch_lingers_to_fill_up_rather_than_insert_a_trickle(
    linger_s: float, inserted: int
) -> None:
    """Records trickling in 7 a fetch: with lingering, one insert of a full batch (20) and no
    wait past it; without, an insert per fetch (ClickHouse's fixed cost paid each time)."""
    ch = FlakyClickHouse()
    sink = _sink(ch, [_record(i, f"i{i}") for i in range(30)])
    sink.consumer = FakeConsumer(sink.consumer.records, ch.log, per_fetch=7)
    sink.batch_size, sink.linger_s = 20, linger_s
    started = asyncio.get_running_loop().time()
    assert await sink.run_once() == inserted
    assert asyncio.get_running_loop().time() - started < 2  # full: it did not wait for more
    assert ch.log == ["insert", "commit"] and len(ch.rows) == inserted
    assert sink.consumer.committed == {TP: inserted}


async def test_a_lingering_batch_is_inserted_when_the_stream_stops() -> None:
    """The last burst of a stream (fewer records than a batch) is inserted once a fetch comes
    back empty, not after the whole linger."""
    ch = FlakyClickHouse()
    sink = _sink(ch, [_record(i, f"i{i}") for i in range(12)])
    sink.consumer = FakeConsumer(sink.consumer.records, ch.log, per_fetch=5)
    sink.linger_s = 30.0
    started = asyncio.get_running_loop().time()
    assert await sink.run_once() == 12
    assert asyncio.get_running_loop().time() - started < 5
    assert ch.log == ["insert", "commit"]

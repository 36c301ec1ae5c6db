"""Benchmark: the processor's CPU per input event, without Kafka.

The processor benchmark (bench/processor.py) runs against a broker on the same two cores, so
its figures move by 10-20% from run to run. This one feeds the same workload's records (the
same generator, encoded as the producer encodes them) through the processor's own record
path - decode, engine, body read from the batch, sweep, output and changelog encoding - with a
sender that only counts, so what it prints is the processing floor the driver adds to Kafka's
cost, steady enough to compare one change with the next. Last line: ``{"events",
"cpu_events_s", "us_per_event"}``. Run: ``.venv/bin/python -m bench.engine_cpu [MESSAGES]``.

``--one-thread N`` runs bench/processor.py --one-thread's two workloads (N messages of one
conversation, N in two-message threads) the same way, taking turns, and prints each one's CPU
per event and the ratio of their rates, the part of that benchmark's ratio that is the
record path's own: ``{"events", "one_thread_us_per_event", "small_threads_us_per_event",
"cpu_ratio"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.processor import ONE_THREAD_INBOX, PER_THREAD, T0, one_thread_events, raw_mail
from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor, _Txn
from inboxstream.processors.record_path import RecordPath
from inboxstream.processors.state import PartitionState
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.models import Event, OutboundEvent
from inboxstream.schemas.serde import serde_for


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class CountingProducer:
    """Stands in for the transactional producer: builds the batches with aiokafka's own
    builder (zstd, as the processor's producer), then drops them instead of sending."""

    def __init__(self) -> None:
        self.records = 0
        self._real = AIOKafkaProducer(compression_type="zstd", max_batch_size=1024 * 1024)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Any:
        return self._real.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.records += batch.record_count()
        batch._build()  # what the sender does before the wire: compression included
        return self._done()

    async def send(self, topic: str, value: Any, **kw: Any) -> asyncio.Future[Any]:
        self.records += 1
        return self._done()

    async def close(self) -> None:
        await self._real.stop()

    @staticmethod
    def _done() -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def workload(processor: StreamProcessor, messages: int) -> list[FakeRecord]:
    """The bench/processor.py workload as records of one partition, in topic order."""
    topics = processor.topics
    items: list[tuple[str, str, Event]] = []
    threads = max(1, messages // PER_THREAD)
    inboxes = max(1, threads // 50)
    n = 0
    for t in range(threads):
        inbox = f"bench{t % inboxes}@inboxstream.test"
        root = f"b{t}-0.{inbox}"
        if t % 3 == 0:
            crm = OutboundEvent(
                event_id=hashlib.sha256(root.encode()).hexdigest()[:32],
                message_id=root,
                inbox_id=inbox,
                contact_email="carla@example.test",
                sent_at=T0,
            )
            items.append((topics.crm_by_inbox, inbox, crm))
        chain: list[str] = []
        for i in range(PER_THREAD):
            mid = f"b{t}-{i}.{inbox}"
            raw = raw_mail(mid, chain[-1] if chain else None, chain, f"Topic {t}", n)
            fetched = FetchedMessage(inbox, "INBOX", "inbox", 1, n + 1, raw)
            message, body = parse_message(fetched, now=T0 + timedelta(seconds=n))
            items += [(topics.messages, inbox, message), (topics.bodies, inbox, body)]
            chain.append(mid)
            n += 1
    return _records(items)


def one_thread_workload(
    processor: StreamProcessor, messages: int, *, one: bool
) -> list[FakeRecord]:
    """bench/processor.py --one-thread's workload (one conversation, or N/2 two-message
    threads) as records of one partition, in topic order."""
    topic = {"messages": processor.topics.messages, "bodies": processor.topics.bodies}
    return _records(
        [(topic[kind], ONE_THREAD_INBOX, e) for kind, e in one_thread_events(messages, one=one)]
    )


def _records(items: list[tuple[str, str, Event]]) -> list[FakeRecord]:
    """Events encoded as the producer encodes them, grouped by topic (offsets per topic)."""
    by_topic: dict[str, list[tuple[str, Event]]] = {}
    for topic, key, event in items:
        by_topic.setdefault(topic, []).append((key, event))
    records = []
    for topic, keyed in by_topic.items():
        for offset, (key, event) in enumerate(keyed):
            serde = serde_for(type(event))
            value = serde.encode(event)
            headers = serde.headers(getattr(event, "event_type", None))
            records.append(FakeRecord(topic, 0, offset, key.encode(), value, headers))
    return records


def _shares(records: list[FakeRecord], messages: int, batch: int) -> list[dict[Any, list[Any]]]:
    """The records cut into transactions of ``batch`` input records (half messages, half
    bodies), in the driver's order within one: messages, then crm-by-inbox, then the rest."""
    shares: list[dict[Any, list[Any]]] = []
    for start in range(0, messages, batch // 2):
        share: dict[Any, list[Any]] = {}
        for rec in records:
            if start <= rec.offset < start + batch // 2:
                share.setdefault((rec.topic, 0), []).append(rec)
        shares.append(share)
    return shares


async def _pass(
    processor: StreamProcessor, shares: list[dict[Any, list[Any]]]
) -> tuple[float, int]:
    """One pass over ``shares`` from an empty state: (seconds, records out)."""
    assert isinstance(processor.work, RecordPath)
    state = PartitionState(0)
    producer = CountingProducer()
    processor.work.states[0] = state
    started = time.perf_counter()
    for share in shares:
        txn = _Txn(producer, 0, {})  # type: ignore[arg-type]
        await processor._send_share(txn, await processor._compute(0, _as_tp(share)))
    elapsed = time.perf_counter() - started
    await producer.close()
    return elapsed, producer.records


def _processor() -> StreamProcessor:
    # in this process: the record path's own cost, no engine process to hand shares to
    processor = StreamProcessor(Settings(), ProcessorConfig(engine_processes=0))
    assert isinstance(processor.work, RecordPath)
    return processor


async def run(messages: int, batch: int = 5000, repeat: int = 3) -> dict[str, float]:
    """The best of ``repeat`` passes, each from an empty state (the box's noise is one-sided:
    the fastest pass is the closest to the code's own cost)."""
    processor = _processor()
    records = workload(processor, messages)
    shares = _shares(records, messages, batch)
    tune_for_streaming()
    elapsed = float("inf")
    for _ in range(repeat):
        seconds, records_out = await _pass(processor, shares)
        elapsed = min(elapsed, seconds)
    events = len(records)
    return {
        "events": events,
        "cpu_events_s": round(events / elapsed),
        "us_per_event": round(elapsed / events * 1e6, 1),
        "records_out": records_out,
    }


async def run_one_thread(messages: int, batch: int = 5000, repeat: int = 3) -> dict[str, float]:
    """Both --one-thread workloads through the record path, ``repeat`` passes each taking
    turns, the best pass of each side."""
    processor = _processor()
    shares = {
        one: _shares(one_thread_workload(processor, messages, one=one), messages, batch)
        for one in (True, False)
    }
    tune_for_streaming()
    best = {True: float("inf"), False: float("inf")}
    for n in range(repeat):
        for one in (True, False) if n % 2 == 0 else (False, True):
            best[one] = min(best[one], (await _pass(processor, shares[one]))[0])
    events = 2 * messages
    return {
        "events": events,
        "one_thread_us_per_event": round(best[True] / events * 1e6, 2),
        "small_threads_us_per_event": round(best[False] / events * 1e6, 2),
        "cpu_ratio": round(best[False] / best[True], 3),
    }


def _as_tp(share: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    from aiokafka import TopicPartition

    return {TopicPartition(t, p): recs for (t, p), recs in share.items()}


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--one-thread":
        messages = int(args[1]) if len(args) > 1 else 20_000
        f = asyncio.run(run_one_thread(messages))
        print(
            f"{messages} messages of one conversation: {f['one_thread_us_per_event']} us an "
            f"event; in two-message threads: {f['small_threads_us_per_event']} us; "
            f"ratio of rates {f['cpu_ratio']}"
        )
        print(json.dumps(f))
        return
    messages = int(args[0]) if args else 20_000
    figures = asyncio.run(run(messages))
    print(
        f"{figures['events']} events through the record path in one process, no Kafka: "
        f"{figures['cpu_events_s']:,} events/s ({figures['us_per_event']} us each), "
        f"{figures['records_out']} records out"
    )
    print(json.dumps({k: figures[k] for k in ("events", "cpu_events_s", "us_per_event")}))


if __name__ == "__main__":
    main()

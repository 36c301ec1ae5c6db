"""Benchmark: the ClickHouse sink, Kafka -> table, against a bare INSERT of the same rows.

Produces N ``inbox.messages`` events (realistic header sizes) to fresh topics, then measures:

* sink: ``run_sink`` as ``sink run`` runs it, from an empty consumer group until every record
  is inserted and committed: fetch from Kafka, Avro decode, model validation, row mapping,
  batched INSERT (settings' batch size), offset commit;
* baseline, in the same run, on the same engine: the same rows, already mapped, INSERTed
  straight into an identical table in batches of the same size, and in one single INSERT.

The ratio sink / bare-batched is what consuming from Kafka costs on top of writing.
Run: ``.venv/bin/python -m bench.sink [N]`` (Kafka must be running). The machine is shared,
so the figures are noisy; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from inboxstream.app.pipeline import run_sink
from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import (
    ClickHouseSettings,
    KafkaSettings,
    Settings,
    SinkSettings,
    TopicSettings,
    load_settings,
)
from inboxstream.infra import kafka, schema_registry
from inboxstream.schemas.models import Address, MessageEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.clickhouse import EmbeddedClickHouse
from inboxstream.sinks.migrate import migrate
from inboxstream.sinks.rows import metadata_row, record_of
from inboxstream.sinks.runner import SinkStats

#: The sink's batch size as deployed (the setting's default), as the docstring says: the
#: bare inserts use the same, and BENCH_SINK_BATCH sets both for an experiment.
BATCH = int(os.environ.get("BENCH_SINK_BATCH", SinkSettings().batch_size))


def _events(n: int, inbox: str) -> list[MessageEvent]:
    start = datetime.now(UTC) - timedelta(days=3)
    headers = (b"Received: from mx.example ([192.0.2.1]) by imap.example\r\n" * 6) + (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example; " + b"x" * 300 + b"\r\n"
    )
    return [
        MessageEvent(
            event_id=f"{inbox}-{i}",
            inbox_id=inbox,
            folder="INBOX",
            folder_role="inbox",
            uidvalidity=1,
            uid=i,
            message_id=f"{i}.{inbox}@mail.example",
            references=[f"{i - 1}.{inbox}@mail.example"] if i % 3 else [],
            subject=f"Re: proposal {i % 500}",
            **{"from": Address(name="Ann Sender", email=f"ann{i % 97}@domain{i % 13}.example")},
            to=[Address(email=inbox)],
            date=start + timedelta(seconds=i),
            internal_date=start + timedelta(seconds=i),
            size=4_000 + i % 20_000,
            flags=["\\Seen"],
            raw_headers=headers,
            observed_at=start + timedelta(seconds=i, milliseconds=300),
        )
        for i in range(1, n + 1)
    ]


async def main(n: int) -> None:
    kafka.install()
    kafka.start()
    schema_registry.install()
    schema_registry.start()
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    settings = load_settings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
        topics=TopicSettings().with_prefix(f"bench{tag}."),
        clickhouse=ClickHouseSettings(path=workdir / "chdb", database=f"bench_{tag}"),
        sink=SinkSettings(
            group_id=f"bench-sink-{tag}",
            batch_size=BATCH,
            batch_timeout_s=0.2,
            linger_s=float(os.environ.get("BENCH_LINGER_S", "1.0")),
        ),
    )
    events = _events(n, f"bench-{tag}@inboxstream.test")
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    serde = serde_for(MessageEvent)
    try:
        for e in events:
            await producer.send(
                settings.topics.messages.name,
                serde.encode(e),
                key=e.inbox_id.encode(),
                headers=serde.headers(e.event_type),
            )
        await producer.flush()
    finally:
        await producer.stop()

    ch = EmbeddedClickHouse.open(settings.clickhouse.path, settings.clickhouse.database)
    migrate(ch)
    # The production path (`sink run`): run until every record is inserted *and* committed.
    stats, stop = SinkStats(), asyncio.Event()
    # What `sink run` does first, on a process holding only its imports. Here the heap also
    # holds the 100,000 events this benchmark made, and the full collection it starts with
    # took 0.6 s of the sink's 3 s: not the sink's cost, so it runs before the clock starts.
    tune_for_streaming()
    t0 = time.perf_counter()
    task = asyncio.create_task(run_sink(settings, ch, stop=stop, stats=stats, purge_every_s=None))
    first_s = None
    while stats.consumed < n and not task.done():
        await asyncio.sleep(0.005)
        if first_s is None and stats.consumed:
            first_s = time.perf_counter() - t0
    sink_s = time.perf_counter() - t0
    print(f"sink start to its first batch: {first_s or 0:.2f} s")
    stop.set()
    sink = await task
    assert sink.stats.inserted == n, sink.stats

    bare_fetch_s = await _bare_fetch_decode(settings, n)

    rows = [
        metadata_row(record_of(e)) for e in events
    ]  # mapped beforehand: the baseline only writes
    bare = EmbeddedClickHouse.open(settings.clickhouse.path, f"bare_{tag}")
    migrate(bare)
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        bare.insert("email_metadata", rows[i : i + BATCH])
    bare_s = time.perf_counter() - t0
    single = EmbeddedClickHouse.open(settings.clickhouse.path, f"single_{tag}")
    migrate(single)
    t0 = time.perf_counter()
    single.insert("email_metadata", rows)
    single_s = time.perf_counter() - t0
    for db in (ch, bare, single):
        got = db.query(f"SELECT count() AS n FROM {db.database}.email_metadata FINAL")
        assert int(got[0]["n"]) == n, (db.database, got)

    print(f"rows: {n}, batch size {BATCH}, engine: embedded chDB")
    print(f"sink Kafka->table:          {n / sink_s:10,.0f} rows/s  ({sink_s:6.2f} s)")
    print(f"bare INSERT, same batches:  {n / bare_s:10,.0f} rows/s  ({bare_s:6.2f} s)")
    print(f"bare INSERT, one statement: {n / single_s:10,.0f} rows/s  ({single_s:6.2f} s)")
    print(f"bare fetch + decode loop:   {n / bare_fetch_s:10,.0f} rows/s  ({bare_fetch_s:6.2f} s)")
    print(f"ratio sink / bare batched:  {(n / sink_s) / (n / bare_s):.2f}")
    ratio = (n / sink_s) / (n / bare_fetch_s)
    print(f"ratio sink / bare fetch+decode: {ratio:.2f}")
    print(
        json.dumps(
            {
                "rows": n,
                "sink_rows_s": round(n / sink_s),
                "bare_rows_s": round(n / bare_fetch_s),
                "ratio": round(ratio, 3),
            }
        )
    )


async def _bare_fetch_decode(settings: Settings, n: int) -> float:
    """The floor under the sink: a fresh consumer reads the same records from the start and
    only decodes them (Avro to dicts), in batches of the sink's size; no rows, no insert."""
    serde = serde_for(MessageEvent)
    consumer = make_consumer(  # the sink's own consumer settings
        settings.kafka,
        settings.topics.messages.name,
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            for records in batches.values():
                for record in records:
                    serde.decode_record(record.value, record.headers)
                got += len(records)
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))

"""Every sink topic from Kafka into its ClickHouse table, on the real Kafka and chDB (or a
server when CLICKHOUSE_URL is set): counted once however often delivered, garbage dead-lettered
while the batch goes on, and a ClickHouse outage waited out without losing or doubling rows."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from inboxstream.app.pipeline import open_clickhouse, run_sink
from inboxstream.core.kafka import (
    DLQ_PREFIX,
    client_options,
    ensure_topics,
    make_consumer,
    make_producer,
)
from inboxstream.core.settings import Settings
from inboxstream.schemas.models import ThreadEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.clickhouse import ClickHouse
from inboxstream.sinks.runner import BatchingSink, SinkStats
from inboxstream.sinks.tables import table_sinks
from tests.helpers import events as ev


def _count(ch: ClickHouse, table: str) -> int:
    rows = ch.query(f"SELECT count() AS n FROM {ch.database}.{table} FINAL")
    return int(rows[0]["n"])


async def _produce_all(settings: Settings, inbox: str) -> dict[str, int]:
    t = settings.topics
    day = ev.ago(days=1)
    n = {
        "email_metadata": await ev.produce(
            settings, t.messages.name, [ev.message(inbox, u, received=day) for u in range(1, 6)]
        ),
        "bodies": await ev.produce(
            settings, t.bodies.name, [ev.body(inbox, u, received=day) for u in range(1, 4)]
        ),
        "inbox_status": await ev.produce(
            settings,
            t.status.name,
            [ev.status(inbox, "connected", day), ev.status(inbox, "idle", ev.ago(hours=1))],
        ),
        "threads": await ev.produce(
            settings, t.threads.name, [ev.assigned(inbox, u, "T1", day) for u in range(1, 5)]
        ),
        "engagements": await ev.produce(
            settings, t.engagements.name, [ev.engagement("E1", inbox, "crm1", day)]
        ),
        "crm_outbound": await ev.produce(
            settings, t.crm_outbound.name, [ev.outbound("crm1", ev.ago(days=2))]
        ),
    }
    return n


async def test_every_topic_lands_once_even_when_delivered_twice(
    settings: Settings, unique: str
) -> None:
    inbox = f"box-{unique}@example.test"
    expected = await _produce_all(settings, inbox)
    await _produce_all(settings, inbox)  # a replay: the same events, the same ids
    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=60)

    assert sink.stats.inserted_by_table == {t: 2 * n for t, n in expected.items()}
    assert {t: _count(ch, t) for t in expected} == expected
    assert sink.stats.dead_lettered == 0


async def test_garbage_is_dead_lettered_with_the_reason_and_the_batch_goes_on(
    settings: Settings, unique: str
) -> None:
    inbox = f"box-{unique}@example.test"
    t = settings.topics
    await ev.produce(settings, t.threads.name, [ev.assigned(inbox, 1, "T1", ev.ago(days=1))])
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(t.engagements.name, b"garbage", key=b"k")
        # valid Avro of the wrong schema, announced as a thread event
        wrong = ev.outbound("x", ev.ago(days=1))
        await producer.send_and_wait(
            t.threads.name,
            serde_for(type(wrong)).encode(wrong),
            key=b"k",
            headers=serde_for(ThreadEvent).headers(),
        )
    finally:
        await producer.stop()
    await ev.produce(settings, t.threads.name, [ev.assigned(inbox, 2, "T1", ev.ago(days=1))])

    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=60)
    assert sink.stats.dead_lettered == 2
    assert _count(ch, "threads") == 2 and _count(ch, "engagements") == 0

    consumer = make_consumer(settings.kafka, t.dead_letter.name, group_id=None)
    await consumer.start()
    try:
        got: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + 20
        while len(got) < 2 and asyncio.get_running_loop().time() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(part)
    finally:
        await consumer.stop()
    reasons = {dict(r.headers)[DLQ_PREFIX + "topic"].decode(): dict(r.headers) for r in got}
    assert set(reasons) == {t.engagements.name, t.threads.name}
    assert reasons[t.engagements.name][DLQ_PREFIX + "exception.class.name"] == b"DecodeError"
    assert b"fingerprint" in reasons[t.engagements.name][DLQ_PREFIX + "exception.message"]


async def test_clickhouse_outage_is_waited_out_without_loss_or_duplicates(
    settings: Settings, unique: str
) -> None:
    inbox = f"box-{unique}@example.test"
    ch = open_clickhouse(settings)
    table = f"{ch.database}.email_metadata"
    # The outage: the table disappears from under the sink (on a server: a stopped node or a
    # read-only replica behave the same way, the INSERT fails and is not the data's fault).
    ch.command(f"DETACH TABLE {table}")
    n = await ev.produce(
        settings,
        settings.topics.messages.name,
        [ev.message(inbox, u, received=ev.ago(days=1)) for u in range(1, 201)],
    )
    stop = asyncio.Event()
    stats = SinkStats()
    task = asyncio.create_task(run_sink(settings, ch, stop=stop, stats=stats))
    for _ in range(300):  # until the sink has hit the outage and is retrying
        await asyncio.sleep(0.1)
        if task.done() or stats.insert_retries >= 2:
            break
    assert not task.done(), "the sink must wait out an outage, not die"
    assert stats.insert_retries >= 2 and stats.inserted == 0
    ch.command(f"ATTACH TABLE {table}")
    for _ in range(300):  # the same sink recovers by itself
        await asyncio.sleep(0.1)
        if stats.inserted >= n:
            break
    stop.set()
    sink = await asyncio.wait_for(task, 30)
    assert sink.stats.dead_lettered == 0 and sink.stats.inserted == n
    assert ch.query(
        f"SELECT count() AS n, uniqExact(event_id) AS distinct_ids FROM {table} FINAL"
    ) == [{"n": n, "distinct_ids": n}]


async def test_a_running_sink_commits_past_the_commit_marker_that_ends_a_partition(
    settings: Settings, unique: str
) -> None:
    """When the fetch that ends a partition stops at a size limit, the transaction's commit
    marker comes alone in the next fetch, which hands out no record. A running sink still
    commits the partition to its end (lag 0), or a lag alert fires forever and a "caught up?"
    check never says yes."""
    inbox = f"box-{unique}@example.test"
    topic = settings.topics.threads.name
    await ensure_topics(settings.kafka, settings.topics)
    serde = serde_for(ThreadEvent)
    txn = AIOKafkaProducer(
        **client_options(settings.kafka), transactional_id=f"marker-{unique}", acks="all"
    )
    await txn.start()
    try:
        async with txn.transaction():
            for u in range(1, 26):  # one partition, one record per batch, then the marker
                event = ev.assigned(inbox, u, "T1", ev.ago(days=1))
                await txn.send_and_wait(topic, serde.encode(event), key=b"k", partition=0)
    finally:
        await txn.stop()
    # fetches of one record batch each (the broker always returns at least one whole batch)
    consumer = make_consumer(
        settings.kafka, topic, group_id=f"sink-{unique}", max_partition_fetch_bytes=64
    )
    dlq = make_producer(settings.kafka)
    probe = make_consumer(settings.kafka, group_id=None)
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    for client in (consumer, dlq, probe, admin):
        await client.start()
    sink = BatchingSink(
        consumer=consumer,
        dlq_producer=dlq,
        dlq_topic=settings.topics.dead_letter.name,
        clickhouse=open_clickhouse(settings),
        tables={topic: table_sinks(settings.topics)[topic]},
        batch_size=10,
        batch_timeout_s=0.2,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    tp = TopicPartition(topic, 0)
    committed = -1
    try:
        end = (await probe.end_offsets([tp]))[tp]
        assert end == 26  # 25 records and the commit marker
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline and not task.done():
            offsets = await admin.list_consumer_group_offsets(f"sink-{unique}")
            committed = offsets[tp].offset if tp in offsets else -1
            if committed == end:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        for client in (consumer, dlq, probe):
            await client.stop()
        await admin.close()
    assert sink.stats.inserted_by_table == {"threads": 25}
    assert committed == end

"""Every sink topic from Kafka into its ClickHouse table, on the real Kafka and chDB (or a
server when CLICKHOUSE_URL is set): counted once however often delivered, garbage dead-lettered
while the batch goes on, and a ClickHouse outage waited out without losing or doubling rows."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord

from inboxstream.app.pipeline import open_clickhouse, run_sink
from inboxstream.core.kafka import DLQ_PREFIX, make_consumer, make_producer
from inboxstream.core.settings import Settings
from inboxstream.schemas.models import ThreadEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.clickhouse import ClickHouse
from inboxstream.sinks.runner import SinkStats
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

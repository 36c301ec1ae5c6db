"""Ready-made batches (``core.batches``) against real Kafka: the same partition, order and
headers as one ``producer.send`` per record, in a transaction too."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from inboxstream.core.batches import BatchSender, Outgoing
from inboxstream.core.kafka import client_options, ensure_topics, make_producer
from inboxstream.core.settings import Settings
from tests.helpers.pipeline import read_records


def _records(topic: str, count: int = 300) -> list[Outgoing]:
    out: list[Outgoing] = []
    for i in range(count):
        key = f"inbox-{i % 7}".encode()
        partition = 0 if i % 50 == 0 else None  # a few with an explicit partition
        out.append((topic, partition, key, f"v{i}".encode() * 40, [("n", str(i).encode())]))
    return out


Row = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def _layout(records: list[ConsumerRecord[bytes, bytes]]) -> dict[int, list[Row]]:
    by_partition: dict[int, list[Row]] = {}
    for rec in records:
        by_partition.setdefault(rec.partition, []).append(
            (rec.key, rec.value, [(k, bytes(v)) for k, v in rec.headers])
        )
    return by_partition


@pytest.mark.parametrize("count", [300, 9])  # big groups go as batches, small ones via send
async def test_batches_land_where_single_sends_land(
    settings: Settings, unique: str, count: int
) -> None:
    await ensure_topics(settings.kafka, settings.topics)
    ours, theirs = settings.topics.threads.name, settings.topics.engagements.name
    plain = make_producer(settings.kafka)
    txn = AIOKafkaProducer(
        **client_options(settings.kafka), transactional_id=f"batches-{unique}-{count}", acks="all"
    )
    await plain.start()
    await txn.start()
    try:
        for topic, partition, key, value, headers in _records(theirs, count):
            await plain.send(topic, value, key=key, partition=partition, headers=list(headers))
        await plain.flush()
        async with txn.transaction():
            await BatchSender(txn).send_all(_records(ours, count))
    finally:
        await plain.stop()
        await txn.stop()
    # EndTxn returns before the commit markers are on every partition: the last stable offset
    # of a partition may lag the commit by a moment, and read_committed stops there.
    deadline = time.monotonic() + 30
    while True:
        got = _layout(await read_records(settings, ours))
        if sum(len(v) for v in got.values()) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    want = _layout(await read_records(settings, theirs))
    assert sum(len(v) for v in got.values()) == count
    assert got == want

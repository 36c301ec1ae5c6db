"""Held replies' bodies read back from inbox.bodies in one pass: nearby offsets read through,
far ones reached by a seek, a record that is not a body given as None, never a wrong body."""

from __future__ import annotations

from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import Settings
from inboxstream.processors.record_path import BODY_READ_RECORDS, RecordPath
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.serde import serde_for
from tests.helpers.pipeline import events_for, reply_raw


async def test_bodies_at_scattered_offsets_come_back_in_one_pass(
    settings: Settings, unique: str
) -> None:
    inbox = f"owner-{unique}@inboxstream.test"
    count = BODY_READ_RECORDS * 2 + 50
    pairs = events_for(
        inbox,
        [reply_raw(f"b{i}-{unique}@x", None, None, "Hi", f"body-{i}-end") for i in range(count)],
    )
    await ensure_topics(settings.kafka, settings.topics)
    topic = settings.topics.bodies.name
    producer = make_producer(settings.kafka)
    await producer.start()
    offsets: dict[int, str] = {}  # offset -> the text its body carries ("" for the poison)
    try:
        for i, (_, body) in enumerate(pairs):
            serde = serde_for(type(body))
            if i == 3:  # poison where a body should be
                meta = await producer.send_and_wait(topic, b"\x00junk", key=inbox.encode())
                offsets[meta.offset] = ""
            meta = await producer.send_and_wait(
                topic, serde.encode(body), key=inbox.encode(), headers=serde.headers()
            )
            offsets[meta.offset] = f"body-{i}-end"
        partition = meta.partition
    finally:
        await producer.stop()
    ordered = sorted(offsets)
    junk = next(o for o, eid in offsets.items() if not eid)
    # near each other, a gap wider than one read, the very last, the poison, and a repeat
    wanted = [ordered[1], ordered[2], ordered[BODY_READ_RECORDS + 40], ordered[-1], junk]
    path = RecordPath(settings.kafka, ProcessorTopics.build(settings.topics))
    try:
        bodies = await path.fetch_bodies(partition, [*wanted, ordered[2]])
    finally:
        await path.close()
    assert set(bodies) == set(wanted)
    assert bodies[junk] is None
    for offset in wanted:
        if offset != junk:
            got = bodies[offset]
            assert got is not None and got.text is not None and offsets[offset] in got.text

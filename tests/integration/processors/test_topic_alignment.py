"""A partition's messages and bodies are taken in step, whatever order the fetches bring.

Every body is published before any message here (record timestamps say each message came
just before its body), so the consumer often hands back a batch of one topic alone (the order
in which getmany drains the partitions it fetched varies). In step, no body is handled before
its message, records are held rather than fetched again, and the outputs are those of a run
that takes the records as they come."""

from __future__ import annotations

from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor
from inboxstream.schemas.models import BodyEvent, MessageEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.pipeline import conversations, outputs

T0_MS = 1_772_442_000_000


async def _publish_bodies_first(
    settings: Settings, pairs: list[tuple[MessageEvent, BodyEvent]]
) -> None:
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for kind in ("bodies", "messages"):
            for i, (message, body) in enumerate(pairs):
                event = body if kind == "bodies" else message
                topic = getattr(settings.topics, kind).name
                serde = serde_for(type(event))
                await producer.send(
                    topic,
                    serde.encode(event),
                    key=event.inbox_id.encode(),
                    headers=serde.headers(),
                    timestamp_ms=T0_MS + 2 * i + (kind == "bodies"),
                )
        await producer.flush()
    finally:
        await producer.stop()


async def _run(settings: Settings, config: ProcessorConfig) -> StreamProcessor:
    processor = StreamProcessor(settings, config)
    await processor.start()
    try:
        await processor.run(until_end=True)
    finally:
        await processor.stop()
    return processor


async def test_bodies_fetched_first_wait_for_their_messages(
    settings: Settings, unique: str
) -> None:
    pairs = []
    for n in range(3):
        inbox = f"step{n}-{unique}@inboxstream.test"
        pairs += conversations(inbox, threads=40, per_thread=5)[0]
    await _publish_bodies_first(settings, pairs)

    # a long wait: on a loaded box a fetch may take a while, and this test counts exactly
    aligned = await _run(
        settings,
        ProcessorConfig(
            group_id=f"step-{unique}", version="step", max_records=150, align_wait_ms=60_000
        ),
    )
    plain = await _run(
        settings,
        ProcessorConfig(
            group_id=f"plain-{unique}", version="plain", max_records=150, align_wait_ms=0
        ),
    )

    counts = aligned.stats.counts
    assert counts["bodies_before_message"] == 0
    assert counts["records_held"] > 0
    assert aligned.stats.records == 2 * len(pairs)  # every record taken once
    assert not aligned._held  # nothing left behind at the end
    threads, engagements = await outputs(settings, "step")
    assert sum(threads.values()) >= len(pairs)
    assert (threads, engagements) == await outputs(settings, "plain")
    # taken as they came, records of the topic drained first are never held
    assert plain.stats.counts["records_held"] == 0

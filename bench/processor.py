"""Benchmark: stream processor throughput with exactly-once on.

Publishes one synthetic workload (inboxes x conversations x replies: inbox.messages +
inbox.bodies, a third of the conversations started by CRM mail so replies become engagements)
to fresh topics, then runs the processor over it twice, each into its own output version and
consumer group:

* baseline: the same loop with at-least-once commits (outputs flushed, then offsets committed);
* exactly-once: outputs, changelog writes and offsets in one Kafka transaction per batch.

and, in the same run, a bare transactional loop: it consumes the same inputs and, for every
partition's share of a batch of the same size, sends as many output records as the processor
sent (outputs and changelog writes, spread evenly) in one transaction with the offsets, and does
nothing else: the floor exactly-once costs on this box.

Prints events/s for each (input records over the time spent in batches, and over the time
from the first batch's start to the last one's end) and the ratios; the last line is one JSON
object ``{"events", "eos_events_s", "bare_eos_events_s", "ratio"}``. Run:
``.venv/bin/python -m bench.processor [MESSAGES]``.

``.venv/bin/python -m bench.processor --one-thread N`` instead threads N messages of one
conversation (one base subject, each replying to a random earlier message) and N messages in
N/2 two-message threads, same run, exactly once; last line ``{"one_thread_events_s",
"small_threads_events_s", "ratio"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from inboxstream.core.kafka import client_options, ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import KafkaSettings, Settings, TopicSettings, load_settings
from inboxstream.infra import kafka, schema_registry
from inboxstream.processors.processor import (
    ProcessorConfig,
    ProcessorStats,
    collect_batch,
    run_processor,
)
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.models import Event, OutboundEvent
from inboxstream.schemas.serde import serde_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PER_THREAD = 5
IDLE_S = 3.0


def raw_mail(mid: str, parent: str | None, refs: list[str], subject: str, n: int) -> bytes:
    lines = [
        "From: Carla Contact <carla@example.test>",
        "To: owner@inboxstream.test",
        f"Message-ID: <{mid}>",
        f"Subject: {subject}",
        "Date: Mon, 02 Mar 2026 10:00:00 +0000",
    ]
    if parent:
        lines += [f"In-Reply-To: <{parent}>", "References: " + " ".join(f"<{r}>" for r in refs)]
    lines += ["Content-Type: text/plain; charset=utf-8", "", f"Message {n}. " * 40, ""]
    return "\r\n".join(lines).encode()


async def publish_workload(settings: Settings, messages: int) -> int:
    """Publish ``messages`` messages (+ bodies, + CRM records); return the records sent."""
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    sent = 0
    try:
        threads = max(1, messages // PER_THREAD)
        inboxes = max(1, threads // 50)
        n = 0
        for t in range(threads):
            inbox = f"bench{t % inboxes}@inboxstream.test"
            root = f"b{t}-0.{inbox}"
            items: list[tuple[str, Event]] = []
            if t % 3 == 0:
                crm = OutboundEvent(
                    event_id=hashlib.sha256(root.encode()).hexdigest()[:32],
                    message_id=root,
                    inbox_id=inbox,
                    contact_email="carla@example.test",
                    sent_at=T0,
                )
                items.append((settings.topics.crm_outbound.name, crm))
            chain: list[str] = []
            for i in range(PER_THREAD):
                mid = f"b{t}-{i}.{inbox}"
                raw = raw_mail(mid, chain[-1] if chain else None, chain, f"Topic {t}", n)
                fetched = FetchedMessage(inbox, "INBOX", "inbox", 1, n + 1, raw)
                message, body = parse_message(fetched, now=T0 + timedelta(seconds=n))
                items += [
                    (settings.topics.messages.name, message),
                    (settings.topics.bodies.name, body),
                ]
                chain.append(mid)
                n += 1
            sent += await _send(producer, items)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _send(producer: AIOKafkaProducer, items: list[tuple[str, Event]]) -> int:
    """Each event to its topic, keyed by its inbox (CRM records without one by "crm")."""
    for topic, event in items:
        serde = serde_for(type(event))
        key = getattr(event, "inbox_id", None) or "crm"
        await producer.send(topic, serde.encode(event), key=key.encode(), headers=serde.headers())
    return len(items)


async def publish_one_thread(settings: Settings, messages: int, *, one: bool) -> int:
    """N messages (+ bodies) of one inbox: one conversation, each message replying to a random
    earlier one, or N/2 two-message threads with subjects of their own."""
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    rng = random.Random(5)
    inbox = "onethread@inboxstream.test"
    mids: list[str] = []
    refs: dict[str, list[str]] = {}
    sent = 0
    try:
        for n in range(messages):
            mid = f"m{n}.{inbox}"
            if one:
                parent = rng.choice(mids) if mids else None
                subject = "Re: Quarterly planning" if parent else "Quarterly planning"
            else:
                parent = mids[-1] if n % 2 else None
                subject = f"Re: Topic {n // 2}" if parent else f"Topic {n // 2}"
            chain = [*refs[parent], parent][-20:] if parent else []
            refs[mid] = chain
            mids.append(mid)
            raw = raw_mail(mid, parent, chain, subject, n)
            fetched = FetchedMessage(inbox, "INBOX", "inbox", 1, n + 1, raw)
            message, body = parse_message(fetched, now=T0 + timedelta(seconds=n))
            sent += await _send(
                producer,
                [(settings.topics.messages.name, message), (settings.topics.bodies.name, body)],
            )
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def bare_transactional(settings: Settings, outputs_per_input: float, group: str) -> float:
    """The floor under exactly once: the processor's consume-transform-produce loop with the
    transform taken out. Same inputs, batches of the processor's size topped up the same way,
    one transactional producer per input partition, as many output records per input record as
    the processor sent (values copied from the inputs), offsets in the same transaction."""
    topics = ProcessorTopics.build(settings.topics, "bare")
    out_topic = topics.threads
    await ensure_topics(settings.kafka, settings.topics, list(topics.specs))
    consumer = make_consumer(settings.kafka, *topics.inputs, group_id=group)
    await consumer.start()
    producers: dict[int, AIOKafkaProducer] = {}
    config = ProcessorConfig()
    records = 0
    busy = 0.0
    owed = 0.0
    idle_since = time.monotonic()
    lock = asyncio.Lock()

    async def producer_of(p: int) -> AIOKafkaProducer:
        async with lock:
            if p not in producers:
                producer = AIOKafkaProducer(
                    **client_options(settings.kafka),
                    transactional_id=f"{group}-p{p}",
                    enable_idempotence=True,
                    acks="all",
                    linger_ms=5,
                    max_batch_size=1024 * 1024,
                    compression_type="zstd",
                )
                await producer.start()
                producers[p] = producer
            return producers[p]

    async def transaction(p: int, share: dict[TopicPartition, list[Any]]) -> int:
        """What the processor does per partition, minus the processing."""
        nonlocal owed
        producer = await producer_of(p)
        sent = 0
        async with producer.transaction():
            offsets = {}
            for tp, recs in share.items():
                for rec in recs:
                    owed += outputs_per_input
                    while owed >= 1:
                        owed -= 1
                        await producer.send(out_topic, rec.value, key=rec.key, partition=p)
                    offsets[tp] = rec.offset + 1
                    sent += 1
            await producer.send_offsets_to_transaction(offsets, group)
        return sent

    try:
        while time.monotonic() - idle_since < IDLE_S:
            batch = await collect_batch(
                consumer,
                max_records=config.max_records,
                max_ms=config.transaction_ms,
                first_timeout_ms=config.fetch_timeout_ms,
            )
            if not batch:
                continue
            idle_since = time.monotonic()
            started = time.perf_counter()
            by_partition: dict[int, dict[TopicPartition, list[Any]]] = {}
            for tp, recs in batch.items():
                by_partition.setdefault(tp.partition, {})[tp] = recs
            # side by side, as the processor runs its partitions' transactions
            done = await asyncio.gather(*(transaction(p, s) for p, s in by_partition.items()))
            records += sum(done)
            busy += time.perf_counter() - started
    finally:
        await consumer.stop()
        for producer in producers.values():
            await producer.stop()
    return records / busy if busy else 0.0


async def run(
    settings: Settings, group: str, version: str, exactly_once: bool
) -> tuple[ProcessorStats, float]:
    config = ProcessorConfig(
        group_id=group, instance_id="bench", version=version, exactly_once=exactly_once
    )
    stats = await run_processor(settings, config, idle_exit_s=IDLE_S)
    return stats, stats.last_batch_at - stats.first_batch_at


def report(name: str, stats: ProcessorStats, wall: float) -> float:
    busy_rate = stats.records / stats.busy_s if stats.busy_s else 0.0
    wall_rate = stats.records / wall if wall > 0 else 0.0
    print(
        f"{name}: {stats.records} events in {stats.batches} batches; "
        f"{busy_rate:,.0f} events/s in batches ({stats.busy_s:.2f} s), "
        f"{wall_rate:,.0f} events/s first to last batch ({wall:.2f} s); "
        f"threads {stats.counts['out:thread.assigned']}, "
        f"engagements {stats.counts['out:engagement.created']}"
    )
    return busy_rate


def _settings(unique: str) -> Settings:
    kafka.install()
    kafka.start()
    schema_registry.install()
    schema_registry.start()
    return load_settings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
        topics=TopicSettings().with_prefix(f"bench{unique}."),
    )


async def main(messages: int) -> None:
    unique = uuid.uuid4().hex[:8]
    settings = _settings(unique)
    t0 = time.perf_counter()
    sent = await publish_workload(settings, messages)
    print(
        f"workload: {sent} input records ({messages} messages) in {time.perf_counter() - t0:.1f} s"
    )
    base_stats, base_wall = await run(settings, f"alo-{unique}", "alo", exactly_once=False)
    eos_stats, eos_wall = await run(settings, f"eos-{unique}", "eos", exactly_once=True)
    base = report("baseline at-least-once", base_stats, base_wall)
    eos = report("exactly-once", eos_stats, eos_wall)
    per_input = eos_stats.records_out / max(eos_stats.records, 1)
    bare = await bare_transactional(settings, per_input, f"bare-{unique}")
    print(
        f"bare transactional loop (no processing, {per_input:.2f} outputs per input, same "
        f"batches): {bare:,.0f} events/s in batches"
    )
    if base:
        print(f"ratio exactly-once / at-least-once (events/s in batches): {eos / base:.2f}")
    if base_wall > 0 and eos_wall > 0:
        print(
            f"ratio exactly-once / at-least-once (first to last batch): {base_wall / eos_wall:.2f}"
        )
    ratio = eos / bare if bare else 0.0
    print(f"ratio exactly-once / bare transactional loop: {ratio:.2f} (target >= 0.5, 15,000 ev/s)")
    print(
        json.dumps(
            {
                "events": eos_stats.records,
                "eos_events_s": round(eos),
                "bare_eos_events_s": round(bare),
                "ratio": round(ratio, 3),
            }
        )
    )


async def one_thread(messages: int) -> None:
    rates = {}
    for label, one in (("one_thread", True), ("small_threads", False)):
        unique = uuid.uuid4().hex[:8]
        settings = _settings(unique)
        await publish_one_thread(settings, messages, one=one)
        stats, wall = await run(settings, f"eos-{unique}", "eos", exactly_once=True)
        rates[label] = report(f"{label.replace('_', ' ')} ({messages} messages)", stats, wall)
    ratio = rates["one_thread"] / rates["small_threads"] if rates["small_threads"] else 0.0
    print(f"ratio one thread / small threads: {ratio:.2f} (target >= 0.8)")
    print(
        json.dumps(
            {
                "one_thread_events_s": round(rates["one_thread"]),
                "small_threads_events_s": round(rates["small_threads"]),
                "ratio": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one-thread":
        asyncio.run(one_thread(int(sys.argv[2])))
    else:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))

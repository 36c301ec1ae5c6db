"""Benchmark: stream processor throughput with exactly-once on.

Publishes one synthetic workload (inboxes x conversations x replies: inbox.messages +
inbox.bodies, a third of the conversations started by CRM mail so replies become engagements)
to fresh topics, then runs the processor over it twice, each into its own output version and
consumer group:

* baseline: the same loop with at-least-once commits (outputs flushed, then offsets committed);
* exactly-once: outputs, changelog writes and offsets in one Kafka transaction per batch.

Prints events/s for each (input records over the time spent in batches, and over the time
from the first batch's start to the last one's end) and the ratio. Run:
``.venv/bin/python -m bench.processor [MESSAGES]``. The machine is shared, so compare the
ratio, not absolute figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import KafkaSettings, Settings, TopicSettings, load_settings
from inboxstream.infra import kafka
from inboxstream.processors.processor import ProcessorConfig, ProcessorStats, run_processor
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
            for topic, event in items:
                serde = serde_for(type(event))
                key = getattr(event, "inbox_id", None) or "crm"
                await producer.send(
                    topic, serde.encode(event), key=key.encode(), headers=serde.headers()
                )
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


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


async def main(messages: int) -> None:
    kafka.install()
    kafka.start()
    unique = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
        topics=TopicSettings().with_prefix(f"bench{unique}."),
    )
    t0 = time.perf_counter()
    sent = await publish_workload(settings, messages)
    print(
        f"workload: {sent} input records ({messages} messages) in {time.perf_counter() - t0:.1f} s"
    )
    base_stats, base_wall = await run(settings, f"alo-{unique}", "alo", exactly_once=False)
    eos_stats, eos_wall = await run(settings, f"eos-{unique}", "eos", exactly_once=True)
    base = report("baseline at-least-once", base_stats, base_wall)
    eos = report("exactly-once", eos_stats, eos_wall)
    if base:
        print(f"ratio exactly-once / at-least-once (events/s in batches): {eos / base:.2f}")
    if base_wall > 0 and eos_wall > 0:
        print(
            f"ratio exactly-once / at-least-once (first to last batch): {base_wall / eos_wall:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))

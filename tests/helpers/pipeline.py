"""Helpers for the processor tests: publish inbox/CRM events, read outputs read_committed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from inboxstream.core.kafka import client_options, ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import Settings, TopicSpec
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
    ThreadEvent,
)
from inboxstream.schemas.serde import serde_for

E = TypeVar("E", bound=Event)
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def events_for(
    inbox_id: str,
    raws: Sequence[bytes],
    *,
    folder: str = "INBOX",
    start_uid: int = 1,
    observed: datetime = T0,
) -> list[tuple[MessageEvent, BodyEvent]]:
    """inbox.messages + inbox.bodies events, as the producer would publish them."""
    out = []
    for i, raw in enumerate(raws):
        fetched = FetchedMessage(inbox_id, folder, "inbox", 1, start_uid + i, raw)
        out.append(parse_message(fetched, now=observed + timedelta(seconds=i)))
    return out


def outbound(
    message_id: str, inbox_id: str | None, contact: str = "c@example.test"
) -> OutboundEvent:
    return OutboundEvent(
        event_id=hashlib.sha256(message_id.encode()).hexdigest()[:32],
        message_id=message_id,
        inbox_id=inbox_id,
        contact_email=contact,
        contact_name="Contact",
        subject="Offer",
        crm_ref="deal-1",
        sent_at=T0,
    )


async def publish(settings: Settings, items: Sequence[tuple[str, str, Event]]) -> None:
    """(topic, key, event) in order, acked."""
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for topic, key, event in items:
            serde = serde_for(type(event))
            await producer.send_and_wait(
                topic,
                serde.encode(event),
                key=key.encode(),
                headers=serde.headers(getattr(event, "event_type", None) or event.schema_name),
            )
    finally:
        await producer.stop()


async def publish_inbox(
    settings: Settings, pairs: Sequence[tuple[MessageEvent, BodyEvent]]
) -> None:
    items: list[tuple[str, str, Event]] = []
    for message, body in pairs:
        items.append((settings.topics.messages.name, message.inbox_id, message))
        items.append((settings.topics.bodies.name, body.inbox_id, body))
    await publish(settings, items)


#: How long a read_committed read waits for the last transactions' markers (see below).
SETTLE_S = 30.0


async def _settled_ends(
    settings: Settings,
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    settle_s: float,
) -> dict[TopicPartition, int]:
    """The read_committed end offsets once no transaction is left open on ``tps``, or after
    ``settle_s``. A commit returns to the producer when the coordinator has logged it; the
    coordinator writes the markers into the partitions after that. So just after a writer
    stops, the last stable offset can still sit at the start of its last transaction and a
    read would miss what it committed (a slow box did: a test read none of a partition's
    output). Settled means the last stable offset has reached the high watermark."""
    deadline = time.monotonic() + settle_s
    probe = make_consumer(settings.kafka, group_id=None, isolation_level="read_uncommitted")
    await probe.start()
    try:
        while True:
            stable = await consumer.end_offsets(tps)
            high = await probe.end_offsets(tps)
            if stable == high or time.monotonic() >= deadline:
                return stable
            await asyncio.sleep(0.05)
    finally:
        await probe.stop()


async def read_records(
    settings: Settings,
    topic: str,
    isolation: str = "read_committed",
    *,
    settle_s: float = SETTLE_S,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic`` (read_committed), in partition order. A caller
    reading while a transaction is deliberately left open passes ``settle_s=0``."""
    consumer = make_consumer(settings.kafka, group_id=None, isolation_level=isolation)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        if isolation == "read_committed" and settle_s > 0:
            end = await _settled_ends(settings, consumer, tps, settle_s)
        else:
            end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for records in batch.values():
                out.extend(records)
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        return out
    finally:
        await consumer.stop()


async def read_all(
    settings: Settings,
    topic: str,
    model: type[E],
    isolation: str = "read_committed",
    *,
    settle_s: float = SETTLE_S,
) -> list[E]:
    """Every committed record of ``topic`` (read_committed), decoded, in partition order."""
    serde = serde_for(model)
    records = await read_records(settings, topic, isolation, settle_s=settle_s)
    return [serde.decode(r.value, r.headers) for r in records]


def reply_raw(
    mid: str,
    in_reply_to: str | None,
    refs: str | None,
    subject: str,
    body: str,
    sender: str = "Carla Contact <carla@example.test>",
) -> bytes:
    lines = [
        f"From: {sender}",
        "To: owner@inboxstream.test",
        f"Message-ID: <{mid}>",
        f"Subject: {subject}",
        "Date: Mon, 02 Mar 2026 10:00:00 +0000",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: <{in_reply_to}>")
    if refs:
        lines.append(f"References: {refs}")
    lines += ["Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode()


def conversations(
    inbox_id: str, threads: int, per_thread: int, *, crm_every: int = 3, start_uid: int = 1
) -> tuple[list[tuple[MessageEvent, BodyEvent]], list[OutboundEvent]]:
    """``threads`` conversations of ``per_thread`` messages; every ``crm_every``-th one starts
    with CRM mail (its crm.outbound record is returned), the others are private mail. Replies
    arrive out of order within each conversation (a late parent in every thread)."""
    raws: list[bytes] = []
    crm: list[OutboundEvent] = []
    for t in range(threads):
        root = f"t{t}-0.{inbox_id}"
        is_crm = t % crm_every == 0
        if is_crm:
            crm.append(outbound(root, inbox_id))
        chain = [root]
        msgs = []
        for i in range(per_thread):
            mid = f"t{t}-{i}.{inbox_id}"
            refs = " ".join(f"<{m}>" for m in chain[:i])
            parent = chain[i - 1] if i else None
            subject = ("Re: " if i else "") + f"Topic {t}"
            msgs.append(reply_raw(mid, parent, refs or None, subject, f"body {t}/{i}"))
            if i:
                chain.append(mid)
        # a late parent: the second message arrives after the third
        if len(msgs) > 2:
            msgs[1], msgs[2] = msgs[2], msgs[1]
        raws.extend(msgs)
    return events_for(inbox_id, raws, start_uid=start_uid), crm


# --- exactly-once runs: the same inputs, processor instances as subprocesses, outputs ---

INBOXSTREAM = str(Path(sys.executable).parent / "inboxstream")


def write_config(settings: Settings, path: Path) -> Path:
    """A config file for ``inboxstream --config``: this test's Kafka and topic names."""
    lines = ["[kafka]", f'bootstrap_servers = "{settings.kafka.bootstrap_servers}"', ""]
    lines += ["[topics]", f"partitions = {settings.topics.partitions}"]
    lines += [f'prefix = "{settings.topics.internal_prefix}"', ""]
    for field in type(settings.topics).model_fields:
        spec = getattr(settings.topics, field)
        if isinstance(spec, TopicSpec):
            lines += [f"[topics.{field}]", f'name = "{spec.name}"']
            lines += [
                f"retention_ms = {spec.retention_ms}",
                f"compacted = {str(spec.compacted).lower()}",
                "",
            ]
    path.write_text("\n".join(lines))
    return path


async def load_inputs(settings: Settings, unique: str, inboxes: int = 3) -> None:
    """``inboxes`` x 60 messages with bodies, every third conversation CRM mail."""
    for n in range(inboxes):
        inbox = f"box{n}-{unique}@inboxstream.test"
        pairs, crm = conversations(inbox, threads=12, per_thread=5)
        # half the CRM records before the mail, half after (replies held, then matched)
        t = settings.topics
        await publish(settings, [(t.crm_outbound.name, c.message_id, c) for c in crm[::2]])
        await publish_inbox(settings, pairs)
        await publish(settings, [(t.crm_outbound.name, c.message_id, c) for c in crm[1::2]])


def event_ids(events: list[ThreadEvent] | list[EngagementEvent]) -> Counter[str]:
    return Counter(e.event_id for e in events)


async def outputs(
    settings: Settings, version: str, *, settle_s: float = SETTLE_S
) -> tuple[Counter[str], Counter[str]]:
    topics = ProcessorTopics.build(settings.topics, version)
    threads = await read_all(settings, topics.threads, ThreadEvent, settle_s=settle_s)
    engagements = await read_all(settings, topics.engagements, EngagementEvent, settle_s=settle_s)
    return event_ids(threads), event_ids(engagements)


async def count_uncommitted(settings: Settings, topic: str) -> int:
    """Records in the log including aborted ones (read_uncommitted)."""
    return len(await read_all(settings, topic, ThreadEvent, isolation="read_uncommitted"))


def run_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    """``inboxstream process`` as its own process (so it can be killed or frozen)."""
    return subprocess.Popen(
        [INBOXSTREAM, "--config", str(config), "process", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def wait_inside_a_transaction(
    proc: subprocess.Popen[str], *, after: int, timeout: float, what: str
) -> None:
    """Return while ``proc`` (run with ``--pause-in-transaction``) holds a transaction open
    that has thread output of its own in the log, after at least ``after`` transactions and
    once some thread output was committed: the moment to kill or freeze it. (Transactions of
    different input partitions overlap, so only the open one's own count says it has output.)"""
    assert proc.stderr is not None
    seen = 0
    deadline = time.monotonic() + timeout
    while True:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"processor exited before the {what}"
        assert time.monotonic() < deadline, "processor never opened a transaction"
        if line.startswith("IN-TRANSACTION"):
            seen += 1
            _, _partition, threads_here, committed = line.split()
            if seen >= after and int(threads_here) and int(committed):
                return


async def group_state(settings: Settings, group: str) -> tuple[str, int]:
    """The consumer group's state (Stable, PreparingRebalance, Empty...) and member count."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        [described] = response.to_object()["groups"]
        return described["state"], len(described["members"])
    finally:
        await admin.close()


async def group_offsets(settings: Settings, group: str) -> dict[TopicPartition, int]:
    """The offsets the group has committed, by partition."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in committed.items()}
    finally:
        await admin.close()


def final_stats(stderr: str) -> dict[str, int]:
    """The JSON line ``inboxstream process`` prints on exit (records and counters)."""
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    assert lines, f"no stats line in:\n{stderr[-3000:]}"
    stats: dict[str, int] = json.loads(lines[-1])
    return stats


async def assignments(settings: Settings, version: str = "") -> dict[str, str]:
    """Latest thread id per message event id."""
    topic = ProcessorTopics.build(settings.topics, version).threads
    latest: dict[str, str] = {}
    for ev in await read_all(settings, topic, ThreadEvent):
        if ev.event_type == "thread.assigned" and ev.message_event_id:
            latest[ev.message_event_id] = ev.thread_id
    return latest

"""Helpers for the processor tests: publish inbox/CRM events, read outputs read_committed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aiokafka import TopicPartition

from producers.parse import FetchedMessage, parse_message
from runtime.kafka import ensure_topics, make_consumer, make_producer
from runtime.settings import Settings
from schemas.models import BodyEvent, Event, MessageEvent, OutboundEvent
from schemas.serde import serde_for

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


async def read_all(
    settings: Settings, topic: str, model: type[E], isolation: str = "read_committed"
) -> list[E]:
    """Every committed record of ``topic`` (read_committed), decoded, in partition order."""
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
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[E] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        serde = serde_for(model)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for records in batch.values():
                out.extend(serde.decode(r.value, r.headers) for r in records)
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        return out
    finally:
        await consumer.stop()


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

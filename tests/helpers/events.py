"""Known events for the sink tests, built the way the producers and processors build them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import Settings
from inboxstream.schemas.models import (
    Address,
    BodyEvent,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
    StatusEvent,
    ThreadEvent,
)
from inboxstream.schemas.serde import serde_for

NOW = datetime.now(UTC).replace(microsecond=0)


def ago(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def _id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def message(
    inbox: str,
    uid: int,
    *,
    received: datetime,
    sender: str = "ann@acme.example",
    role: str = "inbox",
    references: Iterable[str] = (),
    observed: datetime | None = None,
    message_id: str | None = None,
) -> MessageEvent:
    folder = {"inbox": "INBOX", "sent": "Sent"}.get(role, "Archive")
    return MessageEvent(
        event_id=_id(inbox, folder, uid),
        inbox_id=inbox,
        folder=folder,
        folder_role=role,
        uidvalidity=1,
        uid=uid,
        message_id=message_id or f"m{uid}.{inbox}",
        references=list(references),
        subject=f"subject {uid}",
        **{"from": Address(email=sender)},
        date=received,
        internal_date=received,
        size=1000 + uid,
        raw_headers=b"Subject: x\r\n",
        observed_at=observed or received + timedelta(seconds=30),
    )


def body(inbox: str, uid: int, *, received: datetime) -> BodyEvent:
    return BodyEvent(
        event_id=_id(inbox, "INBOX", uid),
        inbox_id=inbox,
        folder="INBOX",
        uidvalidity=1,
        uid=uid,
        message_id=f"m{uid}.{inbox}",
        text=f"body {uid}",
        size=1000 + uid,
        internal_date=received,
        observed_at=received + timedelta(seconds=30),
    )


def status(
    inbox: str, state: str, at: datetime, reason: str | None = None, kind: str | None = None
) -> StatusEvent:
    return StatusEvent(
        event_id=_id(inbox, state, at),
        inbox_id=inbox,
        state=state,
        reason=reason,
        error_kind=kind,
        retriable=False if state == "disconnected" else None,
        server="imap.example:993",
        at=at,
    )


def assigned(inbox: str, uid: int, thread: str, at: datetime) -> ThreadEvent:
    return ThreadEvent(
        event_id=_id(inbox, uid, "assigned", thread),
        inbox_id=inbox,
        message_event_id=_id(inbox, "INBOX", uid),
        message_id=f"m{uid}.{inbox}",
        thread_id=thread,
        occurred_at=at,
    )


def merged(inbox: str, into: str, folded: list[str], at: datetime) -> ThreadEvent:
    return ThreadEvent(
        event_id=_id(inbox, "merged", into, *folded),
        event_type="thread.merged",
        inbox_id=inbox,
        thread_id=into,
        merged_thread_ids=folded,
        occurred_at=at,
    )


def outbound(message_id: str, sent_at: datetime, kind: str = "sent") -> OutboundEvent:
    return OutboundEvent(
        event_id=_id("out", message_id),
        message_id=message_id,
        kind=kind,
        contact_email="bob@client.example",
        sent_at=sent_at,
    )


def engagement(
    engagement_id: str,
    inbox: str,
    crm_message_id: str,
    at: datetime,
    *,
    event_type: str = "engagement.created",
    crm_kind: str = "sent",
) -> EngagementEvent:
    return EngagementEvent(
        event_id=_id(engagement_id, event_type, at),
        event_type=event_type,
        engagement_id=engagement_id,
        inbox_id=inbox,
        message_id=f"reply-{engagement_id}",
        crm_message_id=crm_message_id,
        crm_kind=crm_kind,
        body_text="thanks!" if event_type == "engagement.created" else None,
        occurred_at=at,
    )


async def produce(settings: Settings, topic: str, events: Iterable[Event]) -> int:
    """Publish like the producers do: Avro value, schema headers, key = inbox id."""
    await ensure_topics(settings.kafka, settings.topics)
    producer: AIOKafkaProducer = make_producer(settings.kafka)
    await producer.start()
    n = 0
    try:
        for event in events:
            serde = serde_for(type(event))
            key = getattr(event, "inbox_id", None) or "crm"
            await producer.send(
                topic,
                value=serde.encode(event),
                key=key.encode(),
                headers=serde.headers(getattr(event, "event_type", None)),
            )
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def produce_raw(
    settings: Settings, topic: str, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    """One record exactly as given (poison records for dead-letter tests)."""
    await ensure_topics(settings.kafka, settings.topics)
    producer: AIOKafkaProducer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=b"poison", headers=headers)
    finally:
        await producer.stop()

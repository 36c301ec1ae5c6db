"""Publishing inbox events to Kafka: Avro values, key = inbox id, schema headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from inboxstream.core.batches import BatchSender
from inboxstream.core.contracts import topic_for
from inboxstream.core.metrics import PUBLISHED_BYTES, PUBLISHED_RECORDS
from inboxstream.core.settings import TopicSettings
from inboxstream.producers.encode import EncodedRecord
from inboxstream.producers.parse_pool import INLINE, ParsePool
from inboxstream.schemas.models import BodyEvent, Event, MessageEvent
from inboxstream.schemas.serde import serde_for


@dataclass
class EventPublisher:
    """Sends events and hands back futures so callers checkpoint only after Kafka acked.

    ``parse_pool`` is where backfill batches are parsed and Avro-encoded before sending
    (producers/parse_pool.py; setting ``producer.parse_workers``); by default inline.
    """

    producer: AIOKafkaProducer
    topics: TopicSettings
    parse_pool: ParsePool = field(default=INLINE)
    _batches: BatchSender = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._batches = BatchSender(self.producer)

    def _topic_for(self, event: Event) -> str:
        return self._topic_for_model(type(event))

    def _topic_for_model(self, model: type[Event]) -> str:
        return topic_for(self.topics, model)

    async def send(self, event: Event, key: str) -> asyncio.Future[object]:
        """Queue one event; await the returned future for the broker's ack."""
        serde = serde_for(type(event))
        event_type = getattr(event, "event_type", None) or event.schema_name
        topic = self._topic_for(event)
        value = serde.encode(event)
        future: asyncio.Future[object] = await self.producer.send(
            topic, value=value, key=key.encode(), headers=serde.headers(event_type)
        )
        PUBLISHED_RECORDS.labels(topic).inc()
        PUBLISHED_BYTES.labels(topic).inc(len(value))
        return future

    async def send_encoded(
        self, records: Iterable[EncodedRecord], key: bytes
    ) -> list[asyncio.Future[object]]:
        """Queue values already Avro-encoded (producers/encode.py), with the headers ``send``
        would give their events; await the returned futures for the broker's acks.

        A backfill sends thousands of records a second under one key, and ``producer.send``
        costs more per record than parsing one did, so they go in batches we fill ourselves
        (``core.batches``): the same partition, order and headers as one ``send`` per record.
        """
        outgoing = []
        counts: dict[str, list[int]] = {}
        for record in records:
            model: type[Event] = MessageEvent if record.topic == "messages" else BodyEvent
            headers = serde_for(model).headers(record.event_type, framed=record.framed)
            topic = self._topic_for_model(model)
            outgoing.append((topic, None, key, record.value, headers))
            count = counts.setdefault(topic, [0, 0])
            count[0] += 1
            count[1] += len(record.value)
        for topic, (n, size) in counts.items():
            PUBLISHED_RECORDS.labels(topic).inc(n)
            PUBLISHED_BYTES.labels(topic).inc(size)
        return await self._batches.send_all(outgoing)

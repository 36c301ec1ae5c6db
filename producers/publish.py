"""Publishing inbox events to Kafka: Avro values, key = inbox id, schema headers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from inboxstream.core.contracts import topic_for
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

    def _topic_for(self, event: Event) -> str:
        return self._topic_for_model(type(event))

    def _topic_for_model(self, model: type[Event]) -> str:
        return topic_for(self.topics, model)

    async def send(self, event: Event, key: str) -> asyncio.Future[object]:
        """Queue one event; await the returned future for the broker's ack."""
        serde = serde_for(type(event))
        event_type = getattr(event, "event_type", None) or event.schema_name
        future: asyncio.Future[object] = await self.producer.send(
            self._topic_for(event),
            value=serde.encode(event),
            key=key.encode(),
            headers=serde.headers(event_type),
        )
        return future

    async def send_encoded(self, record: EncodedRecord, key: bytes) -> asyncio.Future[object]:
        """Queue one value already Avro-encoded (producers/encode.py), with the same headers
        ``send`` would give its event."""
        model: type[Event] = MessageEvent if record.topic == "messages" else BodyEvent
        topic = self._topic_for_model(model)
        future: asyncio.Future[object] = await self.producer.send(
            topic, value=record.value, key=key, headers=serde_for(model).headers(record.event_type)
        )
        return future

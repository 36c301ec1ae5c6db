"""Publishing inbox events to Kafka: Avro values, key = inbox id, schema headers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from runtime.settings import TopicSettings
from schemas.models import BodyEvent, Event, MessageEvent, StatusEvent
from schemas.serde import serde_for


@dataclass
class EventPublisher:
    """Sends events and hands back futures so callers checkpoint only after Kafka acked."""

    producer: AIOKafkaProducer
    topics: TopicSettings

    def _topic_for(self, event: Event) -> str:
        if isinstance(event, MessageEvent):
            return self.topics.messages.name
        if isinstance(event, BodyEvent):
            return self.topics.bodies.name
        if isinstance(event, StatusEvent):
            return self.topics.status.name
        raise TypeError(f"no topic for {type(event).__name__}")

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

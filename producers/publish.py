"""Publishing inbox events to Kafka: Avro values, key = inbox id, schema headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from inboxstream.core.contracts import topic_for
from inboxstream.core.settings import TopicSettings
from inboxstream.producers.encode import EncodedRecord
from inboxstream.producers.parse_pool import INLINE, ParsePool
from inboxstream.schemas.models import BodyEvent, Event, MessageEvent
from inboxstream.schemas.serde import serde_for

#: What ``producer.send`` uses for a keyed record: murmur2 of the key over all partitions.
_PARTITIONER = DefaultPartitioner()


@dataclass
class EventPublisher:
    """Sends events and hands back futures so callers checkpoint only after Kafka acked.

    ``parse_pool`` is where backfill batches are parsed and Avro-encoded before sending
    (producers/parse_pool.py; setting ``producer.parse_workers``); by default inline.
    """

    producer: AIOKafkaProducer
    topics: TopicSettings
    parse_pool: ParsePool = field(default=INLINE)
    _partitions: dict[tuple[str, bytes], int] = field(default_factory=dict, repr=False)

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

    async def send_encoded(
        self, records: Iterable[EncodedRecord], key: bytes
    ) -> list[asyncio.Future[object]]:
        """Queue values already Avro-encoded (producers/encode.py), with the headers ``send``
        would give their events; await the returned futures for the broker's acks.

        A backfill sends thousands of records a second under one key, and ``producer.send``
        costs more per record than parsing one did (a pure-Python murmur2 hash, a future and
        an accumulator lookup each). So the records go into batches we fill ourselves, one
        per topic, on the partition the default partitioner gives the key: the same
        partition, order and headers as one ``send`` per record.
        """
        by_model: dict[type[Event], list[EncodedRecord]] = {}
        for record in records:
            model: type[Event] = MessageEvent if record.topic == "messages" else BodyEvent
            by_model.setdefault(model, []).append(record)
        futures: list[asyncio.Future[object]] = []
        for model, group in by_model.items():
            topic = self._topic_for_model(model)
            partition = await self._partition(topic, key)
            batch = self.producer.create_batch()
            for record in group:
                headers = serde_for(model).headers(record.event_type)
                if batch.append(key=key, value=record.value, timestamp=None, headers=headers):
                    continue
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = self.producer.create_batch()  # the first record always fits
                batch.append(key=key, value=record.value, timestamp=None, headers=headers)
            if batch.record_count():
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures

    async def _partition(self, topic: str, key: bytes) -> int:
        cached = self._partitions.get((topic, key))
        if cached is None:
            partitions = list(await self.producer.partitions_for(topic))  # as send() lists them
            cached = _PARTITIONER(key, partitions, partitions)
            self._partitions[(topic, key)] = cached
        return cached

"""The inbox registry as a compacted Kafka topic, for a fleet of producer processes.

One record per inbox: key = inbox id, value = the same JSON document as a registry file
(``producers.registry.to_document``): every setting, the password only as a Fernet token. The
key that opens it stays with the producers (``INBOXSTREAM_SECRET_KEY`` or the key file, the
same on every producer host), never in a topic. A tombstone removes the inbox.

The topic's partitions are what producer processes lease (``producers.fleet``), so inboxes are
placed, not hashed: a new inbox goes to the partition with the fewest inboxes (the lowest
number on a tie), an updated one stays where it is (compaction is per partition). Partitions
then hold equal counts give or take one, and a fleet whose size divides the partition count
(60 by default) splits the inboxes evenly; hashing would leave it to chance (±15% is a common
miss for 300 inboxes over 3 processes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer, read_to_end
from inboxstream.core.settings import InboxSettings, Settings, describe_validation_error
from inboxstream.core.vault import SecretBox, SecretKeyError
from inboxstream.producers.checkpoints import assign_all
from inboxstream.producers.registry import from_document, to_document, with_refresh_token

log = logging.getLogger(__name__)

#: Says what the value holds, for anyone reading the topic with stock tools.
FORMAT_HEADER = ("inboxstream.registry-format", b"json-v1")


def encode_entry(inbox: InboxSettings, box: SecretBox) -> bytes:
    return json.dumps(to_document(inbox, box), sort_keys=True).encode()


def decode_entry(value: bytes, box: SecretBox) -> InboxSettings:
    """Raises ``ValueError`` (with a reason to show) for anything that is not an inbox."""
    try:
        inbox, clear = from_document(json.loads(value), box)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None
    except SecretKeyError as exc:
        raise ValueError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON document: {exc}") from None
    if clear:  # never sync from, or keep using, a secret someone put in a topic in clear
        raise ValueError(
            "the record holds its password or an OAuth2 secret in clear; the registry topic "
            "takes encrypted secrets only (inboxstream inbox add)"
        )
    return inbox


@dataclass
class RegistryView:
    """The registry topic's content as one read saw it."""

    #: inbox id -> (partition, settings)
    inboxes: dict[str, tuple[int, InboxSettings]] = field(default_factory=dict)
    #: inbox id -> why its record could not be read (skipped, never fatal)
    errors: dict[str, str] = field(default_factory=dict)
    #: inbox id -> partition, readable or not (where an update or a removal must go)
    placed: dict[str, int] = field(default_factory=dict)
    partitions: int = 0

    def apply(
        self, partition: int, key: bytes | None, value: bytes | None, box: SecretBox
    ) -> str | None:
        """One record of the topic, in offset order; the reason when it was skipped."""
        if key is None:
            return None
        inbox_id = key.decode("utf-8", "replace")
        self.inboxes.pop(inbox_id, None)
        self.errors.pop(inbox_id, None)
        if value is None:  # tombstone
            self.placed.pop(inbox_id, None)
            return None
        self.placed[inbox_id] = partition
        try:
            self.inboxes[inbox_id] = (partition, decode_entry(value, box))
        except ValueError as exc:
            self.errors[inbox_id] = str(exc)
            return str(exc)
        return None

    def drop(self, partitions: set[int]) -> set[str]:
        """Forget every inbox placed on ``partitions``; their ids."""
        gone = {i for i, p in self.placed.items() if p in partitions}
        for inbox_id in gone:
            self.placed.pop(inbox_id)
            self.inboxes.pop(inbox_id, None)
            self.errors.pop(inbox_id, None)
        return gone

    def least_loaded(self) -> int:
        counts = [0] * self.partitions
        for partition in self.placed.values():
            counts[partition] += 1
        return min(range(self.partitions), key=lambda p: (counts[p], p))


@dataclass
class TopicRegistry:
    """Add, remove and list the inboxes of the registry topic (``inboxstream inbox ...``)."""

    settings: Settings
    box: SecretBox = field(default_factory=SecretBox.default)

    @property
    def topic(self) -> str:
        return self.settings.topics.registry.name

    async def read(self) -> RegistryView:
        await ensure_topics(
            self.settings.kafka, self.settings.topics, [self.settings.topics.registry]
        )
        consumer = make_consumer(self.settings.kafka, group_id=None)
        await consumer.start()
        try:
            return await read_view(consumer, self.topic, self.box)
        finally:
            await consumer.stop()

    async def add(self, inbox: InboxSettings) -> bool:
        """Create or replace; True if it was new."""
        return (await self.add_many([inbox]))[inbox.id]

    async def add_many(self, inboxes: list[InboxSettings]) -> dict[str, bool]:
        """Create or replace each (one read of the topic for all); inbox id -> was it new."""
        view = await self.read()
        created: dict[str, bool] = {}
        records: list[tuple[str, bytes | None, int]] = []
        for inbox in inboxes:
            partition = view.placed.get(inbox.id)
            created[inbox.id] = partition is None
            if partition is None:
                partition = view.placed[inbox.id] = view.least_loaded()
            records.append((inbox.id, encode_entry(inbox, self.box), partition))
        await self._send(records)
        return created

    async def store_refresh_token(self, inbox_id: str, refresh_token: str) -> None:
        """Store a rotated OAuth2 refresh token back into the inbox's record (encrypted)."""
        view = await self.read()
        if inbox_id not in view.inboxes:
            raise KeyError(inbox_id)
        partition, inbox = view.inboxes[inbox_id]
        updated = with_refresh_token(inbox, refresh_token)
        await self._send([(inbox_id, encode_entry(updated, self.box), partition)])

    async def remove(self, inbox_id: str) -> bool:
        view = await self.read()
        partition = view.placed.get(inbox_id)
        if partition is None:
            return False
        await self._send([(inbox_id, None, partition)])
        return True

    async def _send(self, records: list[tuple[str, bytes | None, int]]) -> None:
        producer = make_producer(self.settings.kafka)
        await producer.start()
        try:
            acks = [
                await producer.send(
                    self.topic,
                    value,
                    key=inbox_id.encode(),
                    partition=partition,
                    headers=[FORMAT_HEADER],
                )
                for inbox_id, value, partition in records
            ]
            await asyncio.gather(*acks)
        finally:
            await producer.stop()


async def read_view(consumer: AIOKafkaConsumer, topic: str, box: SecretBox) -> RegistryView:
    """Every partition of ``topic`` from the beginning to its end (no consumer group)."""
    tps: list[TopicPartition] = await assign_all(consumer, topic)
    await consumer.seek_to_beginning(*tps)
    view = RegistryView(partitions=len(tps))
    async for records in read_to_end(consumer, tps):
        for rec in records:
            view.apply(rec.partition, rec.key, rec.value, box)
    for inbox_id, reason in view.errors.items():
        log.warning("inbox registry topic: skipping %s: %s", inbox_id, reason)
    return view

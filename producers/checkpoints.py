"""Per-folder checkpoints in the compacted ``inbox.checkpoints`` topic.

A checkpoint says "every message of this folder with UID <= last_uid, and every flag change
up to highestmodseq, is acknowledged by Kafka". It is written only after the events' acks
(callers await them first), so a crash at any point resumes at or before the truth: no loss,
and re-sent events carry the same idempotency key (event_id).

Kafka is the only store: key = ``<inbox_id>/<folder>`` (inbox ids cannot contain ``/``), the
topic is compacted, and loading means reading it to the end. Any producer process can
therefore take an inbox over by reading the same topic, with no local state to copy.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from inboxstream.core.kafka import assign_paused, client_options, partitions_of, read_to_end
from inboxstream.core.settings import KafkaSettings
from inboxstream.schemas.exceptions import DecodeError
from inboxstream.schemas.models import CheckpointEvent
from inboxstream.schemas.serde import serde_for

log = logging.getLogger(__name__)


def checkpoint_key(inbox_id: str, folder: str) -> bytes:
    return f"{inbox_id}/{folder}".encode()


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (no group), fetching metadata if not known yet;
    paused, for ``read_to_end``."""
    tps = await partitions_of(consumer, topic)
    if not tps:
        raise KafkaError(f"topic {topic} has no partitions (does it exist?)")
    assign_paused(consumer, tps)
    return tps


@dataclass(frozen=True)
class Checkpoint:
    """How far one folder is; ``highestmodseq`` is None on servers without CONDSTORE."""

    inbox_id: str
    folder: str
    uidvalidity: int
    last_uid: int
    highestmodseq: int | None = None
    #: Without QRESYNC, the UIDs <= last_uid the server listed at the last check (an IMAP
    #: sequence set), to find expunges made while no producer ran; None when not known.
    known_uids: str | None = None


@dataclass
class CheckpointStore:
    """Reads the checkpoint topic into memory and writes new checkpoints to it.

    ``refresh()`` reads whatever arrived since the last read (the first call reads from the
    beginning), so an inbox added at run time sees checkpoints another process wrote.
    """

    kafka: KafkaSettings
    topic: str
    producer: AIOKafkaProducer | None = None  # None: read-only (``inbox status``)
    owner: str = field(default_factory=default_owner)
    _known: dict[tuple[str, str], Checkpoint] = field(default_factory=dict, init=False)
    _consumer: AIOKafkaConsumer | None = field(default=None, init=False)
    decode_errors: int = field(default=0, init=False)

    async def start(self) -> None:
        """Open the reader (no consumer group: every process reads all partitions) and load."""
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            tps = await assign_all(consumer, self.topic)  # paused between refreshes
            await consumer.seek_to_beginning(*tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        await self.refresh()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def refresh(self) -> int:
        """Read to the current end of the topic; return how many records were read."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("CheckpointStore.start() was not called")
        read = 0
        async for records in read_to_end(consumer, list(consumer.assignment())):
            for record in records:
                read += 1
                self._apply(record.key, record.value, record.headers)
        return read

    def _apply(self, key: bytes | None, value: bytes | None, headers: object) -> None:
        if value is None:  # tombstone: the inbox was removed and its checkpoints forgotten
            if key is not None:
                inbox_id, _, folder = key.decode("utf-8", "replace").partition("/")
                self._known.pop((inbox_id, folder), None)
            return
        try:
            event = serde_for(CheckpointEvent).decode(value, headers)  # type: ignore[arg-type]
        except DecodeError as exc:
            # A checkpoint we cannot read only costs a re-sync of that folder (same event ids).
            self.decode_errors += 1
            log.warning("skipping unreadable checkpoint %r: %s", key, exc)
            return
        self._known[(event.inbox_id, event.folder)] = Checkpoint(
            event.inbox_id,
            event.folder,
            event.uidvalidity,
            event.last_uid,
            event.highestmodseq,
            event.known_uids,
        )

    def get(self, inbox_id: str, folder: str) -> Checkpoint | None:
        return self._known.get((inbox_id, folder))

    def all(self) -> list[Checkpoint]:
        return list(self._known.values())

    def for_inbox(self, inbox_id: str) -> dict[str, Checkpoint]:
        return {f: cp for (i, f), cp in self._known.items() if i == inbox_id}

    async def save(self, checkpoint: Checkpoint) -> None:
        """Write and wait for the ack. Call only after the folder's events were acked."""
        event = CheckpointEvent(
            inbox_id=checkpoint.inbox_id,
            folder=checkpoint.folder,
            uidvalidity=checkpoint.uidvalidity,
            last_uid=checkpoint.last_uid,
            highestmodseq=checkpoint.highestmodseq,
            owner=self.owner,
            updated_at=datetime.now(UTC),
            known_uids=checkpoint.known_uids,
        )
        serde = serde_for(CheckpointEvent)
        if self.producer is None:
            raise RuntimeError("this CheckpointStore is read-only")
        await self.producer.send_and_wait(
            self.topic,
            value=serde.encode(event),
            key=checkpoint_key(checkpoint.inbox_id, checkpoint.folder),
            headers=serde.headers("checkpoint"),
        )
        self._known[(checkpoint.inbox_id, checkpoint.folder)] = checkpoint

    async def forget_inbox(self, inbox_id: str) -> None:
        """Tombstone every folder of an inbox (``inbox remove --forget``): compaction drops them."""
        if self.producer is None:
            raise RuntimeError("this CheckpointStore is read-only")
        for inbox, folder in [k for k in self._known if k[0] == inbox_id]:
            await self.producer.send_and_wait(
                self.topic, value=None, key=checkpoint_key(inbox, folder)
            )
            self._known.pop((inbox, folder), None)

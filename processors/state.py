"""Processor state per input partition, backed by compacted changelog topics.

Every store write is also a record in ``<prefix>processor[-<version>].<store>-changelog``,
sent inside the same Kafka transaction as the outputs and the input offsets, to the partition
with the same number as the input partition. Restoring a partition reads its changelog
partitions from the beginning to the end (read_committed), so what a new owner sees is exactly
what the previous owner committed. Values are JSON: state is private to the processor and not a
public contract (the outputs are Avro).

Stores:
* ``threads``: metadata of every message of the partition's inboxes (never a body), key
  ``inbox\\0message event id``;
* ``crm``: the CRM Message-IDs that reach this partition (see ``processors.processor``);
* ``pending``: reply candidates held until their crm.outbound record comes (bounded by
  ``retention.REPLY_HOLD_MS``): metadata and the inbox.bodies offset of the body, never a body;
* ``engagements``: emitted engagements (no body), for copies, body expiry and deletion;
* ``meta``: the partition's event-time watermark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from inboxstream.core.kafka import make_consumer
from inboxstream.core.settings import KafkaSettings
from inboxstream.processors.assign import InboxThreads, MessageEntry
from inboxstream.processors.exceptions import StateRestoreError
from inboxstream.processors.jwz import Algorithm

log = logging.getLogger(__name__)

STORES = ("threads", "crm", "pending", "engagements", "meta")
Json = dict[str, Any]


def message_key(inbox_id: str, event_id: str) -> str:
    """The key of one message in ``threads`` and ``pending``: ``inbox\\0event id``."""
    return f"{inbox_id}\x00{event_id}"


def _split(key: str) -> tuple[str, str]:
    inbox, _, rest = key.partition("\x00")
    return inbox, rest


@dataclass
class PartitionState:
    """Everything one input partition's processing needs, plus the changes not yet written."""

    partition: int
    algorithm: Algorithm = "rfc5256"
    threads: dict[str, InboxThreads] = field(default_factory=dict)
    crm: dict[str, Json] = field(default_factory=dict)
    pending: dict[str, Json] = field(default_factory=dict)
    engagements: dict[str, Json] = field(default_factory=dict)
    watermark_ms: int = 0
    # In memory only: the event-time hour of the last metadata sweep, and which held replies
    # reference which Message-ID (so a CRM record finds its replies without a scan).
    swept_bucket: int = -1
    pending_refs: dict[str, set[str]] = field(default_factory=dict)
    changes: dict[tuple[str, str], bytes | None] = field(default_factory=dict)

    # --- writes (recorded for the changelog) ---------------------------------------------

    def _record(self, store: str, key: str, value: Json | None) -> None:
        data = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        self.changes[(store, key)] = data

    def inbox(self, inbox_id: str) -> InboxThreads:
        index = self.threads.get(inbox_id)
        if index is None:
            index = self.threads[inbox_id] = InboxThreads(inbox_id, self.algorithm)
        return index

    def knows(self, inbox_id: str, event_id: str) -> bool:
        index = self.threads.get(inbox_id)
        return index is not None and event_id in index.entries

    def record_message(self, inbox_id: str, entry: MessageEntry) -> None:
        """Write an entry the index already holds (new, or its thread changed)."""
        self._record("threads", message_key(inbox_id, entry.event_id), entry.to_json())

    def drop_message(self, inbox_id: str, event_id: str) -> None:
        self.inbox(inbox_id).remove(event_id)
        self._record("threads", message_key(inbox_id, event_id), None)

    def _index_pending(self, key: str, old: Json | None, new: Json | None) -> None:
        for held, add in ((old, False), (new, True)):
            reply = (held or {}).get("reply")
            if not reply:
                continue
            for ref in {*reply["in_reply_to"], *reply["references"]}:
                keys = self.pending_refs.setdefault(ref, set())
                if add:
                    keys.add(key)
                else:
                    keys.discard(key)
                    if not keys:
                        del self.pending_refs[ref]

    def pending_mentioning(self, message_id: str) -> list[str]:
        """Keys of held replies that reference ``message_id``, in key order."""
        return sorted(self.pending_refs.get(message_id, ()))

    def _set(self, store: str, key: str, value: Json | None) -> None:
        """Write one key of a dict store in memory (keeping the pending index in step)."""
        table: dict[str, Json] = getattr(self, store)
        if store == "pending":
            self._index_pending(key, table.get(key), value)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    def put(self, store: str, key: str, value: Json | None) -> None:
        self._set(store, key, value)
        self._record(store, key, value)

    def advance(self, event_ms: int) -> None:
        if event_ms > self.watermark_ms:
            self.watermark_ms = event_ms
            self._record("meta", "watermark", {"ms": event_ms})

    def take_changes(self) -> dict[tuple[str, str], bytes | None]:
        changes, self.changes = self.changes, {}
        return changes

    # --- restore --------------------------------------------------------------------------

    def apply(self, store: str, key: str, value: bytes | None) -> None:
        """Replay one changelog record into memory (no new change is recorded)."""
        data: Json | None = None if value is None else json.loads(value)
        if store == "threads":
            inbox, event_id = _split(key)
            if data is None:
                self.inbox(inbox).remove(event_id)
            else:
                self.inbox(inbox).load(MessageEntry(**data))
        elif store == "meta":
            self.watermark_ms = int(data["ms"]) if data else 0
        else:
            self._set(store, key, data)


async def restore(
    kafka: KafkaSettings,
    changelogs: dict[str, str],
    partitions: Iterable[int],
    algorithm: Algorithm = "rfc5256",
) -> dict[int, PartitionState]:
    """Read the changelogs of ``partitions`` from the start to their last committed record."""
    states = {p: PartitionState(p, algorithm) for p in partitions}
    if not states:
        return states
    by_topic = {topic: store for store, topic in changelogs.items()}
    tps = [TopicPartition(topic, p) for topic in by_topic for p in states]
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        idle_rounds = 0
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for rec in records:
                    key = rec.key.decode("utf-8", "surrogateescape") if rec.key else ""
                    states[tp.partition].apply(by_topic[tp.topic], key, rec.value)
            done = {tp for tp in remaining if await consumer.position(tp) >= end[tp]}
            remaining -= done
            idle_rounds = 0 if batch or done else idle_rounds + 1
            if idle_rounds > 120:
                raise StateRestoreError(
                    f"changelog restore stalled on {sorted(map(str, remaining))}"
                )
    finally:
        await consumer.stop()
    log.info(
        "restored partitions %s: %d messages, %d CRM ids, %d pending, %d engagements",
        sorted(states),
        sum(len(m) for s in states.values() for m in s.threads.values()),
        sum(len(s.crm) for s in states.values()),
        sum(len(s.pending) for s in states.values()),
        sum(len(s.engagements) for s in states.values()),
    )
    return states

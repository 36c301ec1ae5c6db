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
  a reply's In-Reply-To and References are written once, in its ``threads`` entry (same key),
  and the pending record says ``"refs_in_threads": true`` (``_held_json``, ``apply``);
* ``engagements``: emitted engagements (no body), for copies, body expiry and deletion;
* ``meta``: the partition's event-time watermark.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from inboxstream.core.kafka import ReadStalledError, assign_paused, make_consumer, read_to_end
from inboxstream.core.settings import KafkaSettings
from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.exceptions import StateRestoreError
from inboxstream.processors.incremental import InboxThreads
from inboxstream.processors.indexes import add_to, discard_from
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.records import (
    CrmRecord,
    EngagementRecord,
    Held,
    Reply,
    refs_in_threads_of,
)
from inboxstream.processors.retention import BODY_TTL_MS, DELETED_PURGE_MS, REPLY_HOLD_MS

log = logging.getLogger(__name__)

STORES = ("threads", "crm", "pending", "engagements", "meta")
Json = dict[str, Any]


def message_key(inbox_id: str, event_id: str) -> str:
    """The key of one message in ``threads`` and ``pending``: ``inbox\\0event id``."""
    return f"{inbox_id}\x00{event_id}"


def _reply_key(inbox_id: str, message_id: str) -> str:
    """A reply by its Message-ID, as ``PartitionState.engaged`` asks for it."""
    return f"{inbox_id}\x00{message_id}"


def _split(key: str) -> tuple[str, str]:
    inbox, _, rest = key.partition("\x00")
    return inbox, rest


@dataclass(frozen=True, slots=True)
class _Watermark:
    ms: int

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(self, ms: int) -> None:
        object.__setattr__(self, "ms", ms)

    def to_json(self) -> Json:
        return {"ms": self.ms}


#: What ``changes`` keeps unencoded until taken: records nothing mutates once written.
_Frozen = Held | CrmRecord | EngagementRecord | _Watermark


def _encode(value: Json | None) -> bytes | None:
    if value is None:
        return None
    try:
        # orjson writes the same JSON as the stdlib at a tenth of the cost (UTF-8 rather
        # than \u escapes, which the reader does not mind)...
        return orjson.dumps(value)
    except TypeError:
        # ...but refuses lone surrogates (undecodable header bytes kept by surrogateescape)
        return json.dumps(value, separators=(",", ":")).encode()


def _decode(value: bytes) -> Json:
    try:
        data: Json = orjson.loads(value)
    except orjson.JSONDecodeError:  # a lone surrogate, written by the stdlib (``_encode``)
        data = json.loads(value)
    return data


@dataclass
class PartitionState:
    """Everything one input partition's processing needs, plus the changes not yet written.

    Every write goes through a ``put_*`` method, which updates memory and records the
    changelog write; ``apply`` replays a changelog record without recording one."""

    partition: int
    algorithm: Algorithm = "rfc5256"
    threads: dict[str, InboxThreads] = field(default_factory=dict)
    crm: dict[str, CrmRecord] = field(default_factory=dict)
    pending: dict[str, Held] = field(default_factory=dict)
    engagements: dict[str, EngagementRecord] = field(default_factory=dict)
    watermark_ms: int = 0
    # In memory only: the event-time hour of the last metadata sweep, and which held replies
    # reference which Message-ID (so a CRM record finds its replies without a scan).
    swept_bucket: int = -1
    pending_refs: dict[str, set[str]] = field(default_factory=dict)
    # The Message-ID index is built lazily: most held replies expire (or get their match from
    # a CRM record that came first) before any CRM record asks for them, and indexing every
    # reference of every reply on arrival cost ~7 µs a message of a long conversation.
    # ``_unindexed`` holds the keys put since the last ask (an ordered set); ``_indexed`` the
    # reply each indexed key's references came from, to take them out again.
    _unindexed: dict[str, None] = field(default_factory=dict)
    _indexed: dict[str, Reply] = field(default_factory=dict)
    # In memory only: when each held reply and each engagement is next due for the sweep, as
    # heaps of (due ms, key), so a sweep touches what is due, not the whole store. An entry
    # whose record changed since is stale; the sweep checks the record itself and skips it.
    pending_due: list[tuple[int, str]] = field(default_factory=list)
    engagements_due: list[tuple[int, str]] = field(default_factory=list)
    # In memory only: ``inbox\0Message-ID`` of every engagement, so that asking whether a
    # reply already made one (every reply candidate asks: a copy in another folder) is a
    # set lookup, not its engagement id (a SHA-256, 0.5 µs) looked up in ``engagements``.
    _engaged: set[str] = field(default_factory=set)
    # The changelog writes since the last ``take_changes``: a frozen record is kept as it is
    # and encoded when taken, so a key written twice in one transaction (a held reply, then
    # its body's offset) is encoded once; mutable entries are encoded when written.
    changes: dict[tuple[str, str], bytes | _Frozen | None] = field(default_factory=dict)
    # Pending keys with no live record when first written since the last ``take_changes``:
    # if one goes again before the changes are taken, nothing is written for it. A body that
    # comes before its message and the message in the same batch (two topics read side by
    # side: often) was a hold and its release, one tombstone a message for a key the log
    # never held.
    _fresh: set[str] = field(default_factory=set)
    # Restore only: the last pending record of each key that names its threads entry for its
    # ids. The stores' changelogs are read side by side, in no order between them, so the
    # reply takes the ids of the entry last read under its key, again whenever another comes:
    # when the restore ends that is the entry the record was written beside (an entry that
    # goes later has its reply written again in full, ``drop_message``).
    _compact: dict[str, Json] = field(default_factory=dict)

    # --- threads ------------------------------------------------------------------------

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
        self.changes[("threads", message_key(inbox_id, entry.event_id))] = _encode(entry.to_json())

    def drop_message(self, inbox_id: str, event_id: str) -> None:
        self.inbox(inbox_id).remove(event_id)
        key = message_key(inbox_id, event_id)
        self.changes[("threads", key)] = None
        held = self.pending.get(key)
        if held is not None and held.reply is not None:
            # Its pending record may name this entry for its ids: written again, in full.
            # (A reply is held a day and metadata kept 60, so this is for other settings.)
            self.changes[("pending", key)] = held

    def _entry_at(self, key: str) -> MessageEntry | None:
        inbox_id, event_id = _split(key)
        index = self.threads.get(inbox_id)
        return None if index is None else index.entries.get(event_id)

    # --- crm, pending, engagements --------------------------------------------------------

    def put_crm(self, message_id: str, record: CrmRecord) -> None:
        self.crm[message_id] = record
        self.changes[("crm", message_id)] = record

    def put_pending(self, key: str, held: Held | None) -> None:
        change = ("pending", key)
        if change not in self.changes and key not in self.pending:
            # nothing live under it: the store in memory is what the log holds, plus
            # ``changes`` (a restore ends with the two the same)
            self._fresh.add(key)
        self._set_pending(key, held)
        if held is None and key in self._fresh:
            self.changes.pop(change, None)
        else:
            self.changes[change] = held

    def put_engagement(self, eng_id: str, record: EngagementRecord | None) -> None:
        self._set_engagement(eng_id, record)
        self.changes[("engagements", eng_id)] = record

    def engaged(self, inbox_id: str, message_id: str) -> bool:
        """Whether the reply ``message_id`` of ``inbox_id`` has its engagement (the same as
        ``engagement_id(inbox_id, message_id) in engagements``)."""
        return _reply_key(inbox_id, message_id) in self._engaged

    def _set_engagement(self, eng_id: str, record: EngagementRecord | None) -> None:
        if record is None:
            old = self.engagements.pop(eng_id, None)
            if old is not None:
                self._engaged.discard(_reply_key(old.inbox_id, old.message_id))
            return
        self.engagements[eng_id] = record
        self._engaged.add(_reply_key(record.inbox_id, record.message_id))
        if record.deleted_ms is not None:
            heapq.heappush(self.engagements_due, (record.deleted_ms + DELETED_PURGE_MS, eng_id))
        if not record.body_expired:  # a deleted engagement's body still expires before purge
            heapq.heappush(self.engagements_due, (record.created_ms + BODY_TTL_MS, eng_id))

    @staticmethod
    def _take_due(heap: list[tuple[int, str]], watermark_ms: int) -> list[str]:
        keys: set[str] = set()
        while heap and heap[0][0] <= watermark_ms:
            keys.add(heapq.heappop(heap)[1])
        return sorted(keys)

    def pending_due_now(self) -> list[str]:
        """Keys of held replies that may have expired by the watermark, in key order."""
        return self._take_due(self.pending_due, self.watermark_ms)

    def engagements_due_now(self) -> list[str]:
        """Ids of engagements whose body may have expired or whose purge may be due."""
        return self._take_due(self.engagements_due, self.watermark_ms)

    def _set_pending(self, key: str, held: Held | None) -> None:
        """Write one pending entry in memory, keeping the Message-ID index in step."""
        old = self.pending.get(key)
        reply = None if held is None else held.reply
        # The index changes only with the reply (a body's offset coming in keeps it).
        if old is None or old.reply is not reply:
            indexed = self._indexed.pop(key, None)
            if indexed is not None:
                for ref in _refs_of(indexed):
                    discard_from(self.pending_refs, ref, key)
            if reply is None:
                self._unindexed.pop(key, None)
            else:
                self._unindexed[key] = None
        if held is None:
            self.pending.pop(key, None)
        else:
            self.pending[key] = held
            if old is None or old.since_ms != held.since_ms:
                heapq.heappush(self.pending_due, (held.since_ms + REPLY_HOLD_MS, key))

    def pending_mentioning(self, message_id: str) -> list[str]:
        """Keys of held replies that reference ``message_id``, in key order."""
        if self._unindexed:
            for key in self._unindexed:
                reply = self.pending[key].reply
                assert reply is not None  # a key leaves _unindexed when its reply goes
                for ref in _refs_of(reply):
                    add_to(self.pending_refs, ref, key)
                self._indexed[key] = reply
            self._unindexed.clear()
        return sorted(self.pending_refs.get(message_id, ()))

    def advance(self, event_ms: int) -> None:
        if event_ms > self.watermark_ms:
            self.watermark_ms = event_ms
            self.changes[("meta", "watermark")] = _Watermark(event_ms)

    def take_changes(self) -> dict[tuple[str, str], bytes | None]:
        changes, self.changes = self.changes, {}
        self._fresh.clear()
        return {
            key: value
            if value is None or isinstance(value, bytes)
            else _encode(self._held_json(key[1], value))
            if isinstance(value, Held)
            else _encode(value.to_json())
            for key, value in changes.items()
        }

    def _held_json(self, key: str, held: Held) -> Json:
        """A held reply's ids are written once, in its threads entry (same key), when that
        entry has the same ids: it always has (both are the message's, capped alike), and the
        entry outlives the hold (``drop_message`` writes the reply again in full if not)."""
        reply = held.reply
        if reply is None:
            return held.to_json()
        entry = self._entry_at(key)
        same = (
            entry is not None
            and tuple(entry.references) == reply.references
            and tuple(entry.in_reply_to) == reply.in_reply_to
        )
        return held.to_json(same)

    # --- restore --------------------------------------------------------------------------

    def settle(self) -> int:
        """After a restore's last record: a held reply whose threads entry never came (which
        ``drop_message`` prevents) keeps what it has, without ids to be matched by. How many."""
        waiting = {k: d for k, d in self._compact.items() if k not in self.pending}
        for key, data in waiting.items():
            self._set_pending(key, Held.from_json(data, ([], [])))
        lost, self._compact = len(waiting), {}
        if lost:
            log.warning(
                "partition %d: %d held replies restored without their ids", self.partition, lost
            )
        return lost

    def apply(self, store: str, key: str, value: bytes | None) -> None:
        """Replay one changelog record into memory (no new change is recorded)."""
        data: Json | None = None if value is None else _decode(value)
        if store == "threads":
            inbox, event_id = _split(key)
            if data is None:
                self.inbox(inbox).remove(event_id)
            else:
                entry = MessageEntry(**data)
                self.inbox(inbox).load(entry)
                compact = self._compact.get(key)
                if compact is not None:
                    refs = (entry.in_reply_to, entry.references)
                    self._set_pending(key, Held.from_json(compact, refs))
        elif store == "meta":
            self.watermark_ms = int(data["ms"]) if data else 0
        elif store == "crm":
            if data is None:
                self.crm.pop(key, None)
            else:
                self.crm[key] = CrmRecord.from_json(data)
        elif store == "pending":
            self._compact.pop(key, None)
            if data is not None and refs_in_threads_of(data):
                self._compact[key] = data
                known = self._entry_at(key)
                if known is None:  # its threads entry comes later in the restore
                    self._set_pending(key, None)
                    return
                refs = (known.in_reply_to, known.references)
                self._set_pending(key, Held.from_json(data, refs))
            else:
                self._set_pending(key, Held.from_json(data) if data is not None else None)
        elif store == "engagements":
            self._set_engagement(key, EngagementRecord.from_json(data) if data else None)


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
        assign_paused(consumer, tps)
        await consumer.seek_to_beginning(*tps)
        try:
            async for records in read_to_end(consumer, tps):
                for rec in records:
                    key = rec.key.decode("utf-8", "surrogateescape") if rec.key else ""
                    states[rec.partition].apply(by_topic[rec.topic], key, rec.value)
        except ReadStalledError as exc:
            raise StateRestoreError(f"changelog restore: {exc}") from exc
    finally:
        await consumer.stop()
    for state in states.values():
        state.settle()
    log.info(
        "restored partitions %s: %d messages, %d CRM ids, %d pending, %d engagements",
        sorted(states),
        sum(len(m) for s in states.values() for m in s.threads.values()),
        sum(len(s.crm) for s in states.values()),
        sum(len(s.pending) for s in states.values()),
        sum(len(s.engagements) for s in states.values()),
    )
    return states


def _refs_of(reply: Reply) -> set[str]:
    """The Message-IDs a held reply is found by (any of them may be a CRM record's)."""
    return {*reply.in_reply_to, *reply.references}

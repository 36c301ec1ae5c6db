"""Turning a fresh threading of one inbox into stable thread ids and ``inbox.threads`` events.

The stream processor recomputes an inbox's threads with ``processors.jwz`` (the batch algorithm)
whenever a batch brings new messages for it, then this module maps the new groups onto the ids
it handed out before:

* a group whose members have no thread id yet gets a new id derived from its first message;
* a group holding one known id keeps it (a late parent or a reply joins the existing thread);
* a group holding several ids keeps the id of its earliest member and announces
  ``thread.merged`` for the others;
* if an id ends up in two groups (rare: RFC 5256 (1)(C) let a later message move a link), the
  group with the earliest member keeps it and the other gets a new id.

Everything here is a function of the inbox's messages in arrival order, so a replay or a
restart gives the same ids and the same events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from processors.jwz import Algorithm, ThreadInput, thread_messages
from schemas.models import ThreadEvent


@dataclass
class MessageEntry:
    """What the processor remembers of one message (metadata only, never a body)."""

    seq: int  # arrival order within the partition (the record offset)
    event_id: str
    message_id: str
    references: list[str]
    in_reply_to: list[str]
    subject: str | None
    date_ms: int | None
    observed_ms: int
    thread_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def new_thread_id(inbox_id: str, first_event_id: str, salt: str = "") -> str:
    return _hash("thread", inbox_id, first_event_id, salt)


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def assign_threads(
    inbox_id: str, entries: list[MessageEntry], algorithm: Algorithm = "rfc5256"
) -> list[ThreadEvent]:
    """Recompute the threads of one inbox, update ``entry.thread_id`` in place, and return the
    events that announce every change (assignments of new or moved messages, merges)."""
    ordered = sorted(entries, key=lambda e: e.seq)
    inputs = [
        ThreadInput(
            key=i,
            message_id=e.message_id,
            references=tuple(e.references),
            in_reply_to=tuple(e.in_reply_to),
            subject=e.subject,
            date=_ms_to_dt(e.date_ms if e.date_ms is not None else e.observed_ms),
        )
        for i, e in enumerate(ordered)
    ]
    events: list[ThreadEvent] = []
    used: set[str] = set()
    for thread in thread_messages(inputs, algorithm):
        members = [ordered[k] for k in sorted(thread.keys)]
        old_ids = list(dict.fromkeys(e.thread_id for e in members if e.thread_id))
        free = [t for t in old_ids if t not in used]
        tid = free[0] if free else new_thread_id(inbox_id, members[0].event_id, str(len(old_ids)))
        used.add(tid)
        occurred = _ms_to_dt(max(e.observed_ms for e in members))
        merged = [t for t in free if t != tid]
        if merged:
            events.append(
                ThreadEvent(
                    event_id=_hash(inbox_id, "thread.merged", tid, *merged),
                    event_type="thread.merged",
                    inbox_id=inbox_id,
                    thread_id=tid,
                    merged_thread_ids=merged,
                    root_message_id=thread.root_message_id,
                    base_subject=thread.base_subject or None,
                    algorithm=algorithm,
                    occurred_at=occurred,
                )
            )
        for e in members:
            if e.thread_id == tid:
                continue
            e.thread_id = tid
            events.append(
                ThreadEvent(
                    event_id=_hash(inbox_id, e.event_id, "thread.assigned", tid),
                    event_type="thread.assigned",
                    inbox_id=inbox_id,
                    message_event_id=e.event_id,
                    message_id=e.message_id,
                    thread_id=tid,
                    root_message_id=thread.root_message_id,
                    base_subject=thread.base_subject or None,
                    algorithm=algorithm,
                    occurred_at=_ms_to_dt(e.observed_ms),
                )
            )
    return events

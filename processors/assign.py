"""Turning threads into stable thread ids and ``inbox.threads`` events.

Threading says which messages are one conversation (``processors.incremental`` one message at a
time in the stream processor, ``processors.jwz`` in batch); this module maps those groups onto
the ids handed out before:

* a group whose members have no thread id yet gets a new id derived from its first message;
* a group holding one known id keeps it (a late parent or a reply joins the existing thread);
* a group holding several ids keeps the id of its earliest member and announces
  ``thread.merged`` for the others;
* if an id ends up in two groups (rare: RFC 5256 (1)(C) let a later message move a link), the
  group with the earliest member keeps it and the other gets a new id, never one in use.

Everything here is a function of the inbox's messages in arrival order, so a replay or a
restart gives the same ids and the same events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from inboxstream.processors.jwz import Algorithm, ThreadInput, thread_messages
from inboxstream.schemas.models import ThreadRecord


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

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        seq: int,
        event_id: str,
        message_id: str,
        references: list[str],
        in_reply_to: list[str],
        subject: str | None,
        date_ms: int | None,
        observed_ms: int,
        thread_id: str | None = None,
    ) -> None:
        self.seq = seq
        self.event_id = event_id
        self.message_id = message_id
        self.references = references
        self.in_reply_to = in_reply_to
        self.subject = subject
        self.date_ms = date_ms
        self.observed_ms = observed_ms
        self.thread_id = thread_id

    def to_json(self) -> dict[str, object]:
        # field by field, not ``__dict__``: compiled by mypyc, the class has none
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "message_id": self.message_id,
            "references": self.references,
            "in_reply_to": self.in_reply_to,
            "subject": self.subject,
            "date_ms": self.date_ms,
            "observed_ms": self.observed_ms,
            "thread_id": self.thread_id,
        }


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def new_thread_id(inbox_id: str, first_event_id: str, salt: str = "") -> str:
    return _hash("thread", inbox_id, first_event_id, salt)


@dataclass(frozen=True, slots=True)
class Group:
    """One thread as threading found it: members in arrival order, and what names its root."""

    members: list[MessageEntry]
    root_message_id: str | None
    base_subject: str

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        members: list[MessageEntry],
        root_message_id: str | None,
        base_subject: str,
    ) -> None:
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "root_message_id", root_message_id)
        object.__setattr__(self, "base_subject", base_subject)


def merged_event(
    inbox_id: str, tid: str, merged: list[str], group: Group, algorithm: Algorithm, occurred_ms: int
) -> ThreadRecord:
    """``thread.merged``: the ids in ``merged`` live on as ``tid``."""
    return {
        "event_id": _hash(inbox_id, "thread.merged", tid, *merged),
        "event_type": "thread.merged",
        "inbox_id": inbox_id,
        "message_event_id": None,
        "message_id": None,
        "thread_id": tid,
        "merged_thread_ids": merged,
        "root_message_id": group.root_message_id,
        "base_subject": group.base_subject or None,
        "algorithm": algorithm,
        "occurred_at": occurred_ms,
    }


def assigned_event(
    inbox_id: str, entry: MessageEntry, tid: str, group: Group, algorithm: Algorithm
) -> ThreadRecord:
    """``thread.assigned``: ``entry`` is (now) in thread ``tid``."""
    return {
        "event_id": _hash(inbox_id, entry.event_id, "thread.assigned", tid),
        "event_type": "thread.assigned",
        "inbox_id": inbox_id,
        "message_event_id": entry.event_id,
        "message_id": entry.message_id,
        "thread_id": tid,
        "merged_thread_ids": [],
        "root_message_id": group.root_message_id,
        "base_subject": group.base_subject or None,
        "algorithm": algorithm,
        "occurred_at": entry.observed_ms,
    }


def assign_groups(
    inbox_id: str, groups: list[Group], algorithm: Algorithm = "rfc5256"
) -> list[ThreadRecord]:
    """Map fresh groups (ordered by their first member) onto the ids their members carry,
    update ``entry.thread_id`` in place, and return the events that announce every change
    (the rules are in the module docstring)."""
    events: list[ThreadRecord] = []
    used: set[str] = set()
    for group in groups:
        members = group.members
        old_ids = list(dict.fromkeys(e.thread_id for e in members if e.thread_id))
        free = [t for t in old_ids if t not in used]
        if free:
            tid = free[0]
        else:
            salt = len(old_ids)
            tid = new_thread_id(inbox_id, members[0].event_id, str(salt))
            while tid in used:
                # A thread split twice from the same first message would get the id it was
                # split off with: two conversations, one id. The next salt keeps ids unique.
                salt += 1
                tid = new_thread_id(inbox_id, members[0].event_id, str(salt))
        used.add(tid)
        merged = [t for t in free if t != tid]
        if merged:
            occurred = max(e.observed_ms for e in members)
            events.append(merged_event(inbox_id, tid, merged, group, algorithm, occurred))
        for e in members:
            if e.thread_id != tid:
                e.thread_id = tid
                events.append(assigned_event(inbox_id, e, tid, group, algorithm))
    return events


def assign_threads(
    inbox_id: str, entries: list[MessageEntry], algorithm: Algorithm = "rfc5256"
) -> list[ThreadRecord]:
    """Thread one inbox's messages with the batch algorithm and assign ids (``assign_groups``):
    what the incremental index (``processors.incremental``) must agree with."""
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
    groups = [
        Group([ordered[k] for k in sorted(t.keys)], t.root_message_id, t.base_subject)
        for t in thread_messages(inputs, algorithm)
    ]
    return assign_groups(inbox_id, groups, algorithm)

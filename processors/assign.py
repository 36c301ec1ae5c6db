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

from inboxstream.processors.jwz import Algorithm, ThreadInput, reference_ids, thread_messages
from inboxstream.schemas.models import ThreadEvent


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


def _thread_refs(entry: MessageEntry) -> list[str]:
    # The same ids jwz threads by, so the component index and the threading agree.
    return reference_ids(entry.references, entry.in_reply_to)


class InboxThreads:
    """The thread index of one inbox, updated one message at a time.

    Adding a message recomputes only its *affected component*: the closure of the threads that
    share a Message-ID or reference with it (and, for ``rfc5256``, a base subject), each taken
    whole. Those threads interact with nothing else, so threading that closure with the batch
    algorithm gives the same grouping as threading the whole inbox, at the cost of the
    component instead of the inbox. Each message's events therefore depend only on the
    messages before it, never on how they were batched: restarts and replays emit the same.
    """

    def __init__(self, inbox_id: str, algorithm: Algorithm = "rfc5256") -> None:
        self.inbox_id = inbox_id
        self.algorithm = algorithm
        self.entries: dict[str, MessageEntry] = {}
        self._by_mid: dict[str, set[str]] = {}
        self._by_ref: dict[str, set[str]] = {}
        self._by_thread: dict[str, set[str]] = {}
        self._by_subject: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _subject(self, entry: MessageEntry) -> str:
        from inboxstream.processors.subject import base_subject

        return base_subject(entry.subject) if self.algorithm == "rfc5256" else ""

    def load(self, entry: MessageEntry) -> None:
        """Index an entry as it is (restore); replaces one with the same event id."""
        if entry.event_id in self.entries:
            self.remove(entry.event_id)
        self.entries[entry.event_id] = entry
        eid = entry.event_id
        self._by_mid.setdefault(entry.message_id, set()).add(eid)
        for ref in _thread_refs(entry):
            self._by_ref.setdefault(ref, set()).add(eid)
        if entry.thread_id:
            self._by_thread.setdefault(entry.thread_id, set()).add(eid)
        if subject := self._subject(entry):
            self._by_subject.setdefault(subject, set()).add(eid)

    def remove(self, event_id: str) -> None:
        entry = self.entries.pop(event_id, None)
        if entry is None:
            return
        self._discard(self._by_mid, entry.message_id, event_id)
        for ref in _thread_refs(entry):
            self._discard(self._by_ref, ref, event_id)
        if entry.thread_id:
            self._discard(self._by_thread, entry.thread_id, event_id)
        if subject := self._subject(entry):
            self._discard(self._by_subject, subject, event_id)

    @staticmethod
    def _discard(index: dict[str, set[str]], key: str, event_id: str) -> None:
        ids = index.get(key)
        if ids is not None:
            ids.discard(event_id)
            if not ids:
                del index[key]

    def component(self, entry: MessageEntry) -> list[MessageEntry]:
        """``entry`` and every indexed message whose thread it could change, whole threads."""
        seen: set[str] = set()
        todo = [entry.event_id]
        while todo:
            eid = todo.pop()
            if eid in seen:
                continue
            seen.add(eid)
            e = entry if eid == entry.event_id else self.entries[eid]
            related: set[str] = set()
            related |= self._by_mid.get(e.message_id, set())
            related |= self._by_ref.get(e.message_id, set())
            for ref in _thread_refs(e):
                related |= self._by_mid.get(ref, set())
                related |= self._by_ref.get(ref, set())
            if e.thread_id:
                related |= self._by_thread.get(e.thread_id, set())
            if subject := self._subject(e):
                related |= self._by_subject.get(subject, set())
            todo.extend(related - seen)
        return [entry if eid == entry.event_id else self.entries[eid] for eid in seen]

    def add(self, entry: MessageEntry) -> tuple[list[ThreadEvent], list[MessageEntry]]:
        """Thread one new message: the events to emit and the entries whose thread changed
        (the new one included)."""
        component = self.component(entry)
        before = {e.event_id: e.thread_id for e in component}
        for e in component:
            if e is not entry:
                self.remove(e.event_id)
        events = assign_threads(self.inbox_id, component, self.algorithm)
        for e in component:
            self.load(e)
        changed = [e for e in component if e.thread_id != before[e.event_id] or e is entry]
        return events, changed

"""The stream processor's threading before it became incremental, kept as a test oracle.

Adding a message re-threads its whole *affected component* (every thread sharing a
Message-ID, a reference, a thread id or a base subject with it) with the batch algorithm
(``processors.jwz``) and re-assigns ids with ``processors.assign.assign_threads``. Its cost grows
with the thread, which is why ``processors.incremental`` replaced it; its events are what the
incremental index must reproduce, event for event (``tests/unit/processors/test_incremental.py``).
"""

from __future__ import annotations

from inboxstream.processors.assign import MessageEntry, assign_threads
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.references import reference_ids
from inboxstream.processors.subject import base_subject
from inboxstream.schemas.models import ThreadRecord


def _thread_refs(entry: MessageEntry) -> list[str]:
    return reference_ids(entry.references, entry.in_reply_to)


class ComponentThreads:
    """One inbox's messages; ``add`` threads one more (same contract as ``InboxThreads``)."""

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

    def add(self, entry: MessageEntry) -> tuple[list[ThreadRecord], list[MessageEntry]]:
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

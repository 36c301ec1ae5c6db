"""Stable thread ids and the incremental (per affected component) threading."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.assign import MessageEntry, assign_threads
from inboxstream.processors.incremental import InboxThreads
from inboxstream.processors.jwz import Algorithm, ThreadInput, thread_messages
from inboxstream.processors.mbox import thread_input_from_bytes
from tests.helpers.mailboxes import forests, tricky_mailbox


def entry(i: int, inp: ThreadInput[int]) -> MessageEntry:
    return MessageEntry(
        seq=i,
        event_id=f"ev{i}",
        message_id=inp.message_id or f"synthetic-{i}",
        references=list(inp.references),
        in_reply_to=list(inp.in_reply_to),
        subject=inp.subject,
        date_ms=int(inp.date.timestamp() * 1000) if inp.date else None,
        observed_ms=1_000 + i,
    )


def incremental(entries: list[MessageEntry], algorithm: str = "rfc5256") -> InboxThreads:
    index = InboxThreads("inbox", "rfc5256" if algorithm == "rfc5256" else "references")
    for e in entries:
        index.add(e)
    return index


def grouping_of(index: InboxThreads) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for e in index.entries.values():
        assert e.thread_id is not None
        groups.setdefault(e.thread_id, set()).add(e.event_id)
    return {frozenset(g) for g in groups.values()}


def batch(entries: list[MessageEntry], algorithm: str = "rfc5256") -> set[frozenset[str]]:
    inputs = [
        ThreadInput(
            e.event_id,
            e.message_id,
            tuple(e.references),
            tuple(e.in_reply_to),
            e.subject,
            datetime.fromtimestamp((e.date_ms or e.observed_ms) / 1000, tz=UTC),
        )
        for e in entries
    ]
    alg: Algorithm = "rfc5256" if algorithm == "rfc5256" else "references"
    return {frozenset(t.keys) for t in thread_messages(inputs, alg)}


def test_incremental_equals_batch_on_the_tricky_mailbox() -> None:
    mails, _, _ = tricky_mailbox()
    inputs = [thread_input_from_bytes(i, m.raw) for i, m in enumerate(mails)]
    for algorithm in ("rfc5256", "references"):
        entries = [entry(i, x) for i, x in enumerate(inputs)]
        # synthetic ids as the producer makes them: unique per message
        assert grouping_of(incremental(entries, algorithm)) == batch(entries, algorithm)


@settings(max_examples=120, deadline=None)
@given(forests())
def test_incremental_equals_batch(inputs: list[ThreadInput[int]]) -> None:
    for algorithm in ("rfc5256", "references"):
        entries = [entry(i, x) for i, x in enumerate(inputs)]
        assert grouping_of(incremental(entries, algorithm)) == batch(entries, algorithm)


def test_late_parent_keeps_the_thread_id_and_a_bridge_merges() -> None:
    a = MessageEntry(0, "e0", "a@x", [], [], "One", None, 0)
    b = MessageEntry(1, "e1", "b@x", [], [], "Two", None, 1)
    index = InboxThreads("inbox", "references")
    index.add(a)
    index.add(b)
    ta, tb = a.thread_id, b.thread_id
    assert ta != tb
    bridge = MessageEntry(2, "e2", "c@x", ["a@x", "b@x"], [], "Re", None, 2)
    events, changed = index.add(bridge)
    merged = [e for e in events if e["event_type"] == "thread.merged"]
    assert len(merged) == 1 and merged[0]["thread_id"] == ta
    assert merged[0]["merged_thread_ids"] == [tb]
    assert {e.event_id for e in changed} == {"e1", "e2"}
    assert a.thread_id == b.thread_id == bridge.thread_id == ta


@given(st.permutations(list(range(6))))
def test_thread_ids_depend_only_on_the_messages(order: list[int]) -> None:
    base = [
        MessageEntry(i, f"e{i}", f"m{i}@x", [f"m{i - 1}@x"] if i else [], [], None, None, i)
        for i in range(6)
    ]
    first = assign_threads("inbox", base)
    again = [MessageEntry(**e.to_json() | {"thread_id": None}) for e in base]  # type: ignore[arg-type]
    assert [e["event_id"] for e in assign_threads("inbox", [again[i] for i in order])] == [
        e["event_id"] for e in first
    ]

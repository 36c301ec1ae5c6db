"""The incremental thread index against its oracles, one message at a time.

* the component re-threading it replaced (``tests.helpers.component_threads``): the same events,
  event for event, and the same changed entries, after every message;
* the batch algorithm (``processors.jwz``) over the inbox in arrival order: the same grouping,
  also after expiry removed messages and after a restore.

The messages are hostile on purpose: ids referenced before and after they arrive, loops,
self-references, duplicated and missing Message-IDs, references that disagree (RFC 5256 (1)(C)
moves links), subjects that merge and split threads, equal dates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.incremental import InboxThreads
from inboxstream.processors.jwz import Algorithm, ThreadInput, thread_messages
from tests.helpers.component_threads import ComponentThreads
from tests.helpers.mailboxes import forests

SUBJECTS = [None, "", "alpha", "Re: alpha", "RE: [list] alpha", "beta", "Fwd: beta", "gamma"]
ALGORITHMS: tuple[Algorithm, ...] = ("rfc5256", "references")


@st.composite
def hostile_entries(draw: st.DrawFn) -> list[MessageEntry]:
    n = draw(st.integers(1, 30))
    pool = [f"m{i}@t" for i in range(n + 4)]  # ids of messages to come, or never coming
    out = []
    for i in range(n):
        mid = draw(st.sampled_from([pool[i], pool[i], pool[i], "", draw(st.sampled_from(pool))]))
        refs = draw(st.lists(st.sampled_from([*pool, ""]), max_size=5))  # repeats, empties
        irt = draw(st.lists(st.sampled_from(pool), max_size=2))
        date = draw(st.one_of(st.none(), st.integers(0, 5)))
        out.append(
            MessageEntry(
                seq=i * 3,  # offsets, not positions
                event_id=f"ev{i}",
                message_id=mid,
                references=refs,
                in_reply_to=irt,
                subject=draw(st.sampled_from(SUBJECTS)),
                date_ms=None if date is None else date * 1000,
                observed_ms=10_000 + draw(st.integers(0, 3)) * 1000 + i,
            )
        )
    return out


def from_inputs(inputs: list[ThreadInput[int]]) -> list[MessageEntry]:
    return [
        MessageEntry(
            seq=i,
            event_id=f"ev{i}",
            message_id=x.message_id or f"synthetic-{i}",
            references=list(x.references),
            in_reply_to=list(x.in_reply_to),
            subject=x.subject,
            date_ms=int(x.date.timestamp() * 1000) if x.date else None,
            observed_ms=1_000 + i,
        )
        for i, x in enumerate(inputs)
    ]


def copies(entries: list[MessageEntry]) -> list[MessageEntry]:
    return [MessageEntry(**e.to_json()) for e in entries]  # type: ignore[arg-type]


def batch(entries: list[MessageEntry], algorithm: Algorithm) -> list[list[str]]:
    ordered = sorted(entries, key=lambda e: e.seq)
    inputs = [
        ThreadInput(
            e.event_id,
            e.message_id,
            tuple(e.references),
            tuple(e.in_reply_to),
            e.subject,
            datetime.fromtimestamp((e.observed_ms if e.date_ms is None else e.date_ms) / 1000, UTC),
        )
        for e in ordered
    ]
    return [list(t.keys) for t in thread_messages(inputs, algorithm)]


def by_thread_id(entries: list[MessageEntry]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for e in entries:
        assert e.thread_id is not None
        groups.setdefault(e.thread_id, set()).add(e.event_id)
    return {frozenset(g) for g in groups.values()}


def same_as_oracle(entries: list[MessageEntry], algorithm: Algorithm) -> None:
    ours, theirs = InboxThreads("inbox", algorithm), ComponentThreads("inbox", algorithm)
    mine, oracle = copies(entries), copies(entries)
    for i, (a, b) in enumerate(zip(mine, oracle, strict=True)):
        events, changed = ours.add(a)
        expected, expected_changed = theirs.add(b)
        assert events == expected, i
        assert {e.event_id for e in changed} == {e.event_id for e in expected_changed}, i
        assert [(e.event_id, e.thread_id) for e in mine[: i + 1]] == [
            (e.event_id, e.thread_id) for e in oracle[: i + 1]
        ]
        assert ours.threads() == batch(mine[: i + 1], algorithm), i
    assert by_thread_id(mine) == {frozenset(g) for g in batch(mine, algorithm)}


@settings(max_examples=400, deadline=None)
@given(hostile_entries())
def test_hostile_messages_give_the_events_of_the_component_rethreading(
    entries: list[MessageEntry],
) -> None:
    for algorithm in ALGORITHMS:
        same_as_oracle(entries, algorithm)


@settings(max_examples=150, deadline=None)
@given(forests())
def test_consistent_conversations_give_the_events_of_the_component_rethreading(
    inputs: list[ThreadInput[int]],
) -> None:
    for algorithm in ALGORITHMS:
        same_as_oracle(from_inputs(inputs), algorithm)


def same_with_and_without_the_shortcuts(
    entries: list[MessageEntry], algorithm: Algorithm
) -> tuple[int, int]:
    """Both paths give the same events, changed entries, ids and grouping after every
    message; returns how many messages took each shortcut (new thread, reply)."""
    fast = InboxThreads("inbox", algorithm)
    slow = InboxThreads("inbox", algorithm, shortcuts=False)
    mine, theirs = copies(entries), copies(entries)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        events, changed = fast.add(a)
        expected, expected_changed = slow.add(b)
        assert events == expected, i
        assert [e.event_id for e in changed] == [e.event_id for e in expected_changed], i
        assert [e.thread_id for e in mine] == [e.thread_id for e in theirs], i
        assert fast.threads() == slow.threads(), i
    assert slow.joined == slow.started == 0
    return fast.started, fast.joined


@settings(max_examples=300, deadline=None)
@given(st.one_of(hostile_entries(), forests().map(from_inputs)))
def test_the_shortcuts_give_what_the_general_path_gives(
    entries: list[MessageEntry],
) -> None:
    for algorithm in ALGORITHMS:
        same_with_and_without_the_shortcuts(entries, algorithm)


def path(i: int) -> list[str]:
    """The References of message ``i`` of ``chain``: every message before it (ids built apart,
    as each decoded event carries its own copies)."""
    return [f"m{j}@t" for j in range(i)]


def chain(n: int, refs_of: Callable[[int], list[str]] = path) -> list[MessageEntry]:
    """``n`` messages, each replying to the one before, with the References ``refs_of`` gives."""
    return [
        MessageEntry(
            seq=i,
            event_id=f"ev{i}",
            message_id=f"m{i}@t",
            references=refs_of(i),
            in_reply_to=[f"m{i - 1}@t"] if i else [],
            subject="Re: plan" if i else "plan",
            date_ms=None,
            observed_ms=1_000 + i,
        )
        for i in range(n)
    ]


def test_a_chain_of_replies_takes_the_shortcuts() -> None:
    for algorithm in ALGORITHMS:
        assert same_with_and_without_the_shortcuts(chain(6), algorithm) == (1, 5)


def test_a_reply_whose_references_repeat_or_skip_takes_the_shortcut_by_its_ids() -> None:
    # The walk up the parent pointers takes the message's References as they came only when it
    # meets every one of them; a repeated or empty id, or more ids than the cap, goes through
    # ``reference_ids`` first, and a reply still joins by the shortcut.
    odd = {
        "a repeated id": lambda i: [*path(i), f"m{i - 1}@t"] if i > 1 else path(i),
        "an empty id": lambda i: ["", *path(i)] if i else [],
        "an id twice in the path": lambda i: ["m0@t", *path(i)] if i > 1 else path(i),
        "more ids than the cap": path,  # 40 messages: up to 39 references, capped at 20
    }
    for why, refs_of in odd.items():
        n = 40 if why == "more ids than the cap" else 8
        for algorithm in ALGORITHMS:
            assert same_with_and_without_the_shortcuts(chain(n, refs_of), algorithm) == (
                1,
                n - 1,
            ), why


@settings(max_examples=300, deadline=None)
@given(hostile_entries(), st.data())
def test_expiry_and_restore_keep_the_batch_grouping(
    entries: list[MessageEntry], data: st.DataObject
) -> None:
    for algorithm in ALGORITHMS:
        cut = data.draw(st.integers(0, len(entries)))
        index = InboxThreads("inbox", algorithm)
        first = copies(entries[:cut])
        for e in first:
            index.add(e)
        gone = data.draw(st.sets(st.sampled_from([e.event_id for e in first]))) if first else set()
        for eid in gone:
            index.remove(eid)
        kept = [e for e in first if e.event_id not in gone]
        if data.draw(st.booleans()):  # a restore: a fresh index loads what the changelog holds
            index = InboxThreads("inbox", algorithm)
            for e in reversed(kept):
                index.load(e)
        assert index.threads() == batch(kept, algorithm)
        for e in copies(entries[cut:]):
            index.add(e)
            kept.append(e)
            assert index.threads() == batch(kept, algorithm)
        # every thread the new messages touched is settled: its members carry one id of its own
        touched = {e.event_id for e in kept[len(kept) - (len(entries) - cut) :]}
        ids: dict[str, set[str]] = {}
        for e in kept:
            ids.setdefault(e.thread_id or "", set()).add(e.event_id)
        for group in index.threads():
            if touched & set(group):
                tids = {index.entries[eid].thread_id for eid in group}
                assert len(tids) == 1 and ids[tids.pop() or ""] == set(group)


def test_restore_then_more_mail_gives_the_events_of_an_index_that_never_stopped() -> None:
    convo = [
        MessageEntry(
            i, f"e{i}", f"m{i}@x", [f"m{(i - 1) // 2}@x"] if i else [], [], "Plan", None, 0
        )
        for i in range(40)
    ]
    # a bridge, a late parent and a new root with the same subject come after the restart
    convo[30] = MessageEntry(30, "e30", "m30@x", ["m3@x", "ghost@x"], [], "Other", None, 30)
    convo[31] = MessageEntry(31, "e31", "ghost@x", [], [], "Plan", None, 31)
    straight = InboxThreads("inbox")
    ran = copies(convo)
    expected = [straight.add(e)[0] for e in ran]
    restored = InboxThreads("inbox")
    for e in reversed(copies(ran[:25])):  # as committed: with their thread ids
        restored.load(e)
    got = [restored.add(e)[0] for e in copies(convo[25:])]
    assert got == expected[25:]
    assert restored.threads() == straight.threads()


def test_one_long_thread_never_takes_the_member_by_member_path() -> None:
    """50,000 replies in one conversation, each to an earlier one: every add is one
    assignment found from the message's own path, none re-walks the thread."""
    index = InboxThreads("inbox")
    for i in range(50_000):
        refs = [f"m{(i * 7919) % i}@x"] if i else []
        events, changed = index.add(
            MessageEntry(i, f"e{i}", f"m{i}@x", refs, [], "Re: one subject", None, i)
        )
        assert len(events) == 1 and len(changed) == 1
    assert index.reassigned == 0
    assert len(index.threads()) == 1


def test_an_id_a_mixed_thread_still_carries_is_not_handed_to_another() -> None:
    """Expiry moves a message carrying id A into a thread with another id (mixed, unsettled);
    the thread left with id A must not count as settled: a reply joining it would give A to a
    second conversation (found by hypothesis)."""

    def entry(n: int, refs: list[str] = [], reply: list[str] = []) -> MessageEntry:  # noqa: B006
        return MessageEntry(3 * n, f"ev{n}", f"m{n}@t", refs, reply, None, None, 10_000 + n)

    first = [
        entry(0),
        entry(1, reply=["m2@t"]),
        entry(2, refs=["m1@t", "m13@t"]),
        entry(3, reply=["m0@t"]),
        entry(12, reply=["m0@t"]),
        entry(13, reply=["m3@t"]),  # takes m13 out of m2's thread into m0's (RFC 5256 (1)(C))
    ]
    index = InboxThreads("inbox")
    for e in first:
        index.add(e)
    for gone in ("ev0", "ev1", "ev3"):
        index.remove(gone)
    index.add(late := entry(15, reply=["m0@t"]))
    holders = [e.event_id for e in index.entries.values() if e.thread_id == late.thread_id]
    assert sorted(holders) == ["ev12", "ev15"]


@settings(max_examples=200, deadline=None)
@given(hostile_entries(), st.data())
def test_the_lazy_lookups_equal_lookups_built_from_the_entries_left(
    entries: list[MessageEntry], data: st.DataObject
) -> None:
    """The Message-ID, reference and subject lookups are built when a walk needs them: entries
    removed before that (queued) or after (indexed) leave exactly the lookups a fresh index
    of the entries still held would have."""
    index = InboxThreads("inbox")
    for e in copies(entries):
        index.add(e)
        if data.draw(st.booleans()):
            index._index_pending()  # a walk came
        if index.entries and data.draw(st.booleans()):
            index.remove(data.draw(st.sampled_from(sorted(index.entries))))
    index._index_pending()
    fresh = InboxThreads("inbox")
    fresh.entries = dict(index.entries)
    fresh._unindexed = dict.fromkeys(index.entries)
    fresh._index_pending()
    for name in ("_by_mid", "_by_ref", "_by_base"):
        assert getattr(index, name) == getattr(fresh, name), name


def _holds_ids_once(entries: list[MessageEntry]) -> None:
    by_mid = {e.message_id: e.message_id for e in entries}
    for e in entries:
        assert e.references == path(int(e.event_id[2:]))
        for ref in e.references:
            assert ref is by_mid[ref], (e.event_id, ref)
        for ref in e.in_reply_to:
            assert ref is by_mid[ref], (e.event_id, ref)


def test_a_reply_keeps_the_ids_its_ancestors_hold_not_copies() -> None:
    """Memory: a reply in a long conversation refers to up to 20 messages the index already
    holds; it keeps their strings, not the copies its event decoded, on every path (the
    shortcut, the general path, a restore's rebuild), and its lists keep their contents."""
    for shortcuts in (True, False):
        index = InboxThreads("inbox", shortcuts=shortcuts)
        entries = chain(12)
        for e in entries:
            index.add(e)
        _holds_ids_once(entries)
    restored = InboxThreads("inbox")
    loaded = copies(entries)
    for e in loaded:
        restored.load(e)
    restored.add(chain(13)[12])  # the next message rebuilds the table from the entries
    _holds_ids_once(loaded)


@settings(max_examples=300, deadline=None)
@given(hostile_entries())
def test_threading_leaves_each_entry_s_ids_as_they_came(entries: list[MessageEntry]) -> None:
    """Sharing the table's strings never changes what an entry says (its changelog record):
    duplicate, empty and unknown ids, and In-Reply-To without References, included."""
    for algorithm in ALGORITHMS:
        mine = copies(entries)
        index = InboxThreads("inbox", algorithm)
        for e in mine:
            index.add(e)
        assert [(e.references, e.in_reply_to) for e in mine] == [
            (e.references, e.in_reply_to) for e in entries
        ]

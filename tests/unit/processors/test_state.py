"""Processor state: what is written to the changelog restores to the same state."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.matcher import Match, engagement_id
from inboxstream.processors.records import CrmRecord, EngagementRecord, Held, Reply
from inboxstream.processors.state import PartitionState


def test_changelog_round_trip_and_pending_index() -> None:
    live = PartitionState(0)
    entry = MessageEntry(5, "e1", "m1@x", ["crm@x"], ["crm@x"], "Re: hi", None, 1000)
    events, changed = live.inbox("i").add(entry)
    for e in changed:
        live.record_message("i", e)
    reply = Reply("i", "e1", "m1@x", ("crm@x",), ("a@x", "crm@x"), "Re: hi", None, None, 1000)
    live.put_pending("i\x00e1", Held(since_ms=1000, reply=reply, body_at=7))
    live.put_crm("crm@x", CrmRecord("sent", "i", None, None, None, None, None))
    live.put_pending("i\x00gone", Held(since_ms=0, body_at=3))
    live.put_pending("i\x00gone", None)
    record = EngagementRecord("i", "m1@x", "crm@x", "sent", 1000, False)
    live.put_engagement("eng", record)
    live.advance(1000)
    assert live.pending_mentioning("crm@x") == ["i\x00e1"]

    restored = PartitionState(0)
    for (store, key), value in live.take_changes().items():
        restored.apply(store, key, value)
    assert restored.pending == live.pending and restored.crm == live.crm
    assert restored.engagements == {"eng": record}
    assert restored.watermark_ms == 1000
    assert restored.inbox("i").entries["e1"].thread_id == entry.thread_id is not None
    assert restored.pending_mentioning("a@x") == ["i\x00e1"]
    assert live.take_changes() == {}  # taken once

    restored.put_pending("i\x00e1", None)
    assert restored.pending_mentioning("crm@x") == []
    assert len(events) == 1 and events[0]["event_type"] == "thread.assigned"


def test_changelog_values_keep_the_earlier_json_format() -> None:
    """Records restore what older processors committed: same keys, same order, same bytes."""
    state = PartitionState(0)
    reply = Reply("i", "e1", "m1@x", ("crm@x",), ("crm@x",), "Re: hi", "c@x", "C", 5)
    state.put_pending("k", Held(since_ms=5, reply=reply, match=Match("crm@x", "in_reply_to")))
    state.put_pending("early", Held(since_ms=3, body_at=9))
    state.put_engagement("g", EngagementRecord("i", "m1@x", "crm@x", "sent", 5, False))
    changes = state.take_changes()
    assert changes[("pending", "k")] == (
        b'{"reply":{"inbox_id":"i","event_id":"e1","message_id":"m1@x","in_reply_to":["crm@x"],'
        b'"references":["crm@x"],"subject":"Re: hi","from_email":"c@x","from_name":"C",'
        b'"observed_ms":5},"since_ms":5,"match":{"crm_message_id":"crm@x",'
        b'"matched_by":"in_reply_to"},"body_at":null}'
    )
    assert changes[("pending", "early")] == b'{"body_at":9,"since_ms":3}'
    assert changes[("engagements", "g")] == (
        b'{"inbox_id":"i","message_id":"m1@x","crm_message_id":"crm@x","crm_kind":"sent",'
        b'"created_ms":5,"body_expired":false,"deleted_ms":null}'
    )


def test_a_pending_key_born_and_gone_between_takes_writes_nothing() -> None:
    """A body before its message, both in one transaction, the message not a reply: the
    hold and its release leave the log as it was, so no tombstone is written. A key with a
    live record still gets its tombstone, and so does one held in an earlier transaction."""
    state = PartitionState(0)
    state.put_pending("i\x00root", Held(since_ms=5, body_at=3))
    state.put_pending("i\x00root", None)
    state.put_pending("i\x00never", None)
    state.put_pending("i\x00held", Held(since_ms=5, body_at=4))
    assert state.take_changes() == {("pending", "i\x00held"): b'{"body_at":4,"since_ms":5}'}

    state.put_pending("i\x00held", None)  # live in the log: the release is written
    state.put_pending("i\x00again", Held(since_ms=6, body_at=8))
    state.put_pending("i\x00again", None)
    state.put_pending("i\x00again", Held(since_ms=6, body_at=9))
    assert state.take_changes() == {
        ("pending", "i\x00held"): None,
        ("pending", "i\x00again"): b'{"body_at":9,"since_ms":6}',
    }
    state.put_pending("i\x00again", None)
    state.put_pending("i\x00again", Held(since_ms=7, body_at=10))
    state.put_pending("i\x00again", None)  # was live when the batch began
    assert state.take_changes() == {("pending", "i\x00again"): None}
    assert state.pending == {}


IDS = [f"m{i}@x" for i in range(6)]
_replies = st.builds(
    lambda key, irt, refs: Reply("i", key, f"own-{key}@x", irt, refs, None, None, None, 0),
    st.sampled_from(["e1", "e2", "e3", "e4"]),
    st.lists(st.sampled_from(IDS), max_size=2).map(tuple),
    st.lists(st.sampled_from(IDS), max_size=4).map(tuple),
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["e1", "e2", "e3", "e4"]), _replies),
        st.tuples(st.just("body"), st.sampled_from(["e1", "e2", "e3", "e4"]), st.none()),
        st.tuples(st.just("offset"), st.sampled_from(["e1", "e2", "e3", "e4"]), st.none()),
        st.tuples(st.just("drop"), st.sampled_from(["e1", "e2", "e3", "e4"]), st.none()),
        st.tuples(st.just("ask"), st.sampled_from(IDS), st.none()),
    ),
    max_size=40,
)


@given(_steps)
def test_pending_index_names_exactly_the_held_replies_that_mention_an_id(
    steps: list[tuple[str, str, Reply | None]],
) -> None:
    """The lazily built Message-ID index against a scan of every held reply, after any mix
    of replies held, replaced, given a body offset, turned into early bodies and dropped."""
    state = PartitionState(0)

    def scan(message_id: str) -> list[str]:
        return sorted(
            key
            for key, held in state.pending.items()
            if held.reply is not None
            and message_id in {*held.reply.in_reply_to, *held.reply.references}
        )

    for step, arg, reply in steps:
        if step == "put":
            assert reply is not None
            state.put_pending(arg, Held(since_ms=1, reply=reply))
        elif step == "body":
            state.put_pending(arg, Held(since_ms=2, body_at=3))
        elif step == "offset" and arg in state.pending:
            state.put_pending(arg, state.pending[arg].with_body_at(9))
        elif step == "drop":
            state.put_pending(arg, None)
        elif step == "ask":
            assert state.pending_mentioning(arg) == scan(arg)
    for message_id in IDS:
        assert state.pending_mentioning(message_id) == scan(message_id)
    # nothing stale stays behind in the index
    assert all(state.pending_refs.values())


def _entry(event_id: str, refs: list[str]) -> MessageEntry:
    return MessageEntry(1, event_id, f"own-{event_id}@x", refs, refs[-1:], "Re: hi", None, 1000)


def test_a_held_reply_writes_its_ids_once_in_its_threads_entry() -> None:
    """The pending record of a reply names its threads entry for its ids; a reply whose ids
    differ from its entry's (or that has none) is written in full."""
    state = PartitionState(0)
    refs = ["a@x", "b@x", "crm@x"]
    for event_id in ("e1", "e2"):
        state.inbox("i").add(entry := _entry(event_id, refs))
        state.record_message("i", entry)
    same = Reply("i", "e1", "own-e1@x", ("crm@x",), tuple(refs), "Re: hi", "c@x", "C", 5)
    other = Reply("i", "e2", "own-e2@x", ("crm@x",), ("crm@x",), "Re: hi", "c@x", "C", 5)
    state.put_pending("i\x00e1", Held(since_ms=5, reply=same, body_at=4))
    state.put_pending("i\x00e2", Held(since_ms=5, reply=other))
    state.put_pending("i\x00e3", Held(since_ms=5, reply=same))  # no entry under its key
    changes = state.take_changes()
    assert changes[("pending", "i\x00e1")] == (
        b'{"reply":{"inbox_id":"i","event_id":"e1","message_id":"own-e1@x","subject":"Re: hi",'
        b'"from_email":"c@x","from_name":"C","observed_ms":5,"refs_in_threads":true},'
        b'"since_ms":5,"match":null,"body_at":4}'
    )
    assert b'"references":["crm@x"]' in (changes[("pending", "i\x00e2")] or b"")
    assert b'"references":["a@x","b@x","crm@x"]' in (changes[("pending", "i\x00e3")] or b"")
    for order in (sorted(changes.items()), sorted(changes.items(), reverse=True)):
        restored = PartitionState(0)
        for (store, key), value in order:  # the entry before the reply, and after it
            restored.apply(store, key, value)
        assert restored.settle() == 0
        assert restored.pending == state.pending
        assert restored.pending_mentioning("b@x") == ["i\x00e1", "i\x00e3"]


def test_a_dropped_entry_has_its_held_reply_written_again_in_full() -> None:
    state = PartitionState(0)
    state.inbox("i").add(entry := _entry("e1", ["a@x", "crm@x"]))
    state.record_message("i", entry)
    reply = Reply("i", "e1", "own-e1@x", ("crm@x",), ("a@x", "crm@x"), None, None, None, 5)
    state.put_pending("i\x00e1", Held(since_ms=5, reply=reply))
    log = list(state.take_changes().items())
    state.drop_message("i", "e1")
    later = state.take_changes()
    assert b'"references":["a@x","crm@x"]' in (later[("pending", "i\x00e1")] or b"")
    compacted = dict(log) | later  # what compaction leaves: the last record of each key
    for records in (log + list(later.items()), list(compacted.items())):
        restored = PartitionState(0)
        for (store, key), value in records:
            restored.apply(store, key, value)
        assert restored.settle() == 0
        assert restored.pending == state.pending and not restored.knows("i", "e1")


def test_a_held_reply_whose_entry_never_comes_is_kept_without_ids() -> None:
    state = PartitionState(0)
    state.inbox("i").add(entry := _entry("e1", ["crm@x"]))
    state.record_message("i", entry)
    reply = Reply("i", "e1", "own-e1@x", ("crm@x",), ("crm@x",), None, None, None, 5)
    state.put_pending("i\x00e1", Held(since_ms=5, reply=reply, body_at=2))
    restored = PartitionState(0)
    restored.apply("pending", "i\x00e1", state.take_changes()[("pending", "i\x00e1")])
    assert restored.pending == {}  # waits for its entry
    assert restored.settle() == 1
    kept = restored.pending["i\x00e1"]
    assert kept.body_at == 2 and kept.reply is not None and kept.reply.references == ()


_log_steps = st.lists(
    st.tuples(
        st.sampled_from(["message", "hold", "hold-other", "offset", "release", "drop"]),
        st.sampled_from(["e1", "e2", "e3"]),
        st.lists(st.sampled_from(IDS), min_size=1, max_size=3, unique=True),
        st.booleans(),  # the transaction ends after this step
    ),
    max_size=30,
)


@given(_log_steps, st.randoms(use_true_random=False))
@example(  # an entry dropped and written again with other ids, then a reply held beside it
    [
        ("message", "e1", ["m0@x"], True),
        ("drop", "e1", ["m0@x"], False),
        ("message", "e1", ["m1@x"], False),
        ("hold", "e1", ["m0@x"], False),
    ],
    random.Random(1),
)
@settings(max_examples=500)
def test_the_changelog_restores_held_replies_read_in_any_order_between_stores(
    steps: list[tuple[str, str, list[str], bool]], rnd: Any
) -> None:
    """Any mix of messages, held replies (with their entry's ids or others), body offsets,
    releases and dropped entries, in transactions; restored from the whole log and from the
    compacted log, the stores' records interleaved at random (each store's in its order)."""
    state = PartitionState(0)
    log: list[tuple[tuple[str, str], bytes | None]] = []
    for step, event_id, refs, commit in steps:
        key = "i\x00" + event_id
        entry = state.inbox("i").entries.get(event_id)
        if step == "message" and entry is None:
            state.inbox("i").add(entry := _entry(event_id, refs))
            state.record_message("i", entry)
        elif step in ("hold", "hold-other"):
            ids = entry.references if entry is not None and step == "hold" else refs
            reply = Reply("i", event_id, f"own-{event_id}@x", tuple(ids[-1:]), tuple(ids),
                          None, None, None, 5)  # fmt: skip
            state.put_pending(key, Held(since_ms=5, reply=reply))
        elif step == "offset" and key in state.pending:
            state.put_pending(key, state.pending[key].with_body_at(7))
        elif step == "release":
            state.put_pending(key, None)
        elif step == "drop" and entry is not None:
            state.drop_message("i", event_id)
        if commit:
            log += state.take_changes().items()
    log += state.take_changes().items()
    for records in (log, list(dict(log).items())):
        by_store: dict[str, list[tuple[tuple[str, str], bytes | None]]] = {}
        for record in records:
            by_store.setdefault(record[0][0], []).append(record)
        restored = PartitionState(0)
        while by_store:
            store = rnd.choice(sorted(by_store))
            (name, key), value = by_store[store].pop(0)
            restored.apply(name, key, value)
            if not by_store[store]:
                del by_store[store]
        assert restored.settle() == 0
        assert restored.pending == state.pending
        assert restored.inbox("i").entries.keys() == state.inbox("i").entries.keys()
        for message_id in IDS:
            assert restored.pending_mentioning(message_id) == state.pending_mentioning(message_id)


_engagement_steps = st.lists(
    st.tuples(
        st.sampled_from(["i", "j"]),
        st.sampled_from(["m1@x", "m2@x", "m3@x"]),
        st.sampled_from(["put", "deleted", "body_gone", "drop"]),
    ),
    max_size=30,
)


@given(_engagement_steps)
def test_engaged_answers_as_the_engagement_id_lookup_it_replaces(
    steps: list[tuple[str, str, str]],
) -> None:
    """``engaged`` (a set of inbox and Message-ID) says what ``engagement_id(...) in
    engagements`` said, after any puts, lifecycle changes and drops, live and restored."""
    live = PartitionState(0)
    for inbox, mid, what in steps:
        eng_id = engagement_id(inbox, mid)
        record = live.engagements.get(eng_id)
        if what == "put":
            live.put_engagement(eng_id, EngagementRecord(inbox, mid, "crm@x", "sent", 5, False))
        elif what == "drop":
            live.put_engagement(eng_id, None)
        elif record is not None:
            changed = record.deleted_at(9) if what == "deleted" else record.body_gone()
            live.put_engagement(eng_id, changed)
    restored = PartitionState(0)
    for (store, key), value in live.take_changes().items():
        restored.apply(store, key, value)
    for state in (live, restored):
        for inbox in ("i", "j"):
            for mid in ("m1@x", "m2@x", "m3@x"):
                expected = engagement_id(inbox, mid) in state.engagements
                assert state.engaged(inbox, mid) is expected, (inbox, mid)

"""Processor state: what is written to the changelog restores to the same state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.matcher import Match
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

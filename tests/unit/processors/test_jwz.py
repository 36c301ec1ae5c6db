"""RFC 5256 REFERENCES threading: the tricky cases one by one, and order-independence."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.jwz import Algorithm, ThreadInput, thread_messages
from inboxstream.processors.mbox import thread_input_from_bytes
from tests.helpers.mailboxes import forests, tricky_mailbox

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def grouping(inputs: list[ThreadInput[int]], algorithm: str = "rfc5256") -> set[frozenset[int]]:
    alg: Algorithm = "rfc5256" if algorithm == "rfc5256" else "references"
    return {frozenset(t.keys) for t in thread_messages(inputs, alg)}


def msg(key: int, mid: str | None, *refs: str, subject: str | None = None) -> ThreadInput[int]:
    return ThreadInput(key, mid, tuple(refs), (), subject, T0 + timedelta(minutes=key))


def test_tricky_mailbox_groups_as_rfc5256_says() -> None:
    mails, rfc, refs_only = tricky_mailbox()
    inputs = [thread_input_from_bytes(i, m.raw) for i, m in enumerate(mails)]
    for algorithm, expected in (("rfc5256", rfc), ("references", refs_only)):
        got = {frozenset(mails[k].label for k in g) for g in grouping(inputs, algorithm)}
        assert got == {frozenset(e) for e in expected}, algorithm


def test_placeholder_parent_joins_siblings_and_late_parent_relinks() -> None:
    early = [msg(1, "b", "a"), msg(2, "c", "a")]
    assert grouping(early) == {frozenset({1, 2})}
    assert grouping([*early, msg(3, "a")]) == {frozenset({1, 2, 3})}


def test_cycle_is_broken_and_self_reference_ignored() -> None:
    assert grouping([msg(1, "x", "y"), msg(2, "y", "x"), msg(3, "z", "z")]) == {
        frozenset({1, 2}),
        frozenset({3}),
    }


def test_duplicate_message_id_belongs_to_the_first() -> None:
    inputs = [msg(1, "d", subject="one"), msg(2, "d", subject="two"), msg(3, "r", "d")]
    assert grouping(inputs) == {frozenset({1, 3}), frozenset({2})}


def test_in_reply_to_used_only_without_references() -> None:
    with_refs = ThreadInput(2, "m2", ("a",), ("b",), None, None)
    irt_only = ThreadInput(3, "m3", (), ("b", "a"), None, None)
    got = grouping([msg(0, "a"), msg(1, "b"), with_refs, irt_only], "references")
    assert got == {frozenset({0, 2}), frozenset({1, 3})}


def test_subject_merge_only_in_rfc5256_and_never_for_empty_subjects() -> None:
    inputs = [
        msg(1, "p", subject="Plan"),
        msg(2, "q", subject="Re: plan"),
        msg(3, "r", subject=""),
        msg(4, "s", subject=None),
    ]
    assert grouping(inputs) == {frozenset({1, 2}), frozenset({3}), frozenset({4})}
    assert len(grouping(inputs, "references")) == 4


def test_placeholder_root_takes_its_earliest_childs_subject() -> None:
    inputs = [
        ThreadInput(1, "k1", ("gone",), (), "Re: Later", T0 + timedelta(hours=2)),
        ThreadInput(2, "k2", ("gone",), (), "Re: Earlier", T0 + timedelta(hours=1)),
        msg(3, "k3", subject="Earlier"),
        msg(4, "k4", subject="Later"),
    ]
    assert grouping(inputs) == {frozenset({1, 2, 3}), frozenset({4})}


@settings(max_examples=150, deadline=None)
@given(forests(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_grouping(
    inputs: list[ThreadInput[int]], rnd: random.Random
) -> None:
    shuffled = list(inputs)
    rnd.shuffle(shuffled)
    for algorithm in ("rfc5256", "references"):
        assert grouping(shuffled, algorithm) == grouping(inputs, algorithm)


@settings(max_examples=100, deadline=None)
@given(forests())
def test_every_message_in_exactly_one_thread(inputs: list[ThreadInput[int]]) -> None:
    for algorithm in ("rfc5256", "references"):
        keys = [k for group in grouping(inputs, algorithm) for k in group]
        assert sorted(keys) == list(range(len(inputs)))

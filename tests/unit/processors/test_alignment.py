"""Messages and bodies in step (``processors.alignment``): what is held back and what goes.

Nothing is lost, duplicated or reordered: per topic partition, what goes now followed by what
is held is what came. What goes stays in step: no record of one topic is later than the last
record of the other topic of its partition while that other has more to read."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.processors.alignment import cap, in_step

M, B, C = "messages", "bodies", "crm"


@dataclass(frozen=True)
class Rec:
    offset: int
    timestamp: int


def _records(stamps: list[int]) -> list[Rec]:
    return [Rec(i, t) for i, t in enumerate(stamps)]


stamps = st.lists(st.integers(0, 50), max_size=30).map(sorted)
batches = st.dictionaries(
    st.builds(TopicPartition, st.sampled_from([M, B, C]), st.integers(0, 2)),
    stamps.map(_records),
    max_size=9,
)
more = st.sets(st.builds(TopicPartition, st.sampled_from([M, B]), st.integers(0, 2)))


def _joined(
    first: dict[TopicPartition, list[Rec]], then: dict[TopicPartition, list[Rec]]
) -> dict[TopicPartition, list[Rec]]:
    tps = set(first) | set(then)
    return {tp: first.get(tp, []) + then.get(tp, []) for tp in tps if first.get(tp) or then.get(tp)}


@given(batches, more)
def test_in_step_loses_nothing_and_keeps_order(
    batch: dict[TopicPartition, list[Rec]], more_to_read: set[TopicPartition]
) -> None:
    now, held = in_step(batch, M, B, more_to_read.__contains__)
    assert _joined(now, held) == {tp: r for tp, r in batch.items() if r}
    assert all(tp.topic in (M, B) for tp in held)  # other topics never wait


@given(batches, more)
def test_what_goes_is_in_step(
    batch: dict[TopicPartition, list[Rec]], more_to_read: set[TopicPartition]
) -> None:
    now, held = in_step(batch, M, B, more_to_read.__contains__)
    partner = {M: B, B: M}
    for tp, records in now.items():
        if tp.topic == C:
            continue
        other = TopicPartition(partner[tp.topic], tp.partition)
        if other in more_to_read:
            theirs = batch.get(other)
            assert theirs, f"{tp} went while {other} had nothing here and more to read"
            assert records[-1].timestamp <= theirs[-1].timestamp
    for tp, records in held.items():
        # held only for a partner that has more to read, and only what runs past it
        other = TopicPartition(partner[tp.topic], tp.partition)
        assert other in more_to_read
        theirs = batch.get(other)
        assert not theirs or records[0].timestamp > theirs[-1].timestamp


@given(batches)
def test_nothing_waits_for_what_will_not_come(batch: dict[TopicPartition, list[Rec]]) -> None:
    now, held = in_step(batch, M, B, lambda tp: False)
    assert held == {}
    assert now == {tp: r for tp, r in batch.items() if r}


def test_bodies_past_the_last_message_wait_for_it() -> None:
    batch = {
        TopicPartition(M, 0): _records([1, 3, 5]),
        TopicPartition(B, 0): _records([2, 4, 6, 8]),
    }
    now, held = in_step(batch, M, B, lambda tp: True)
    assert [r.timestamp for r in now[TopicPartition(B, 0)]] == [2, 4]
    assert [r.timestamp for r in held[TopicPartition(B, 0)]] == [6, 8]
    assert [r.timestamp for r in now[TopicPartition(M, 0)]] == [1, 3, 5]
    # a partner with more to read and nothing here: everything of the other topic waits
    now, held = in_step({TopicPartition(B, 1): _records([1])}, M, B, lambda tp: True)
    assert now == {} and [r.timestamp for r in held[TopicPartition(B, 1)]] == [1]


@given(batches, batches, st.integers(1, 40))
def test_cap_keeps_order_and_size(
    ready: dict[TopicPartition, list[Rec]],
    held: dict[TopicPartition, list[Rec]],
    limit: int,
) -> None:
    ready = {tp: r for tp, r in ready.items() if r}
    held = {tp: r for tp, r in held.items() if r}
    now, later = cap(ready, held, limit)
    assert _joined(now, later) == _joined(ready, held)
    total = sum(len(r) for r in now.values())
    stamps_ready = sorted(r.timestamp for rs in ready.values() for r in rs)
    if len(stamps_ready) <= limit:
        assert now == ready and later == held
        return
    assert total > 0  # never a batch of nothing
    # over the limit only where the first records' timestamps all tie past it
    assert total <= limit or stamps_ready[0] == stamps_ready[limit]
    # one cut across partitions: everything kept is earlier than everything cut
    kept = [r.timestamp for rs in now.values() for r in rs]
    cut = [r.timestamp for tp, rs in ready.items() for r in rs[len(now.get(tp, [])) :]]
    if kept and cut:
        assert max(kept) < min(cut)

"""The bodies kept for read-back (``processors.body_cache``): within the budget, oldest out
first, a record taken once, and never a record other than the one put at that offset."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.processors.body_cache import ENTRY_OVERHEAD, BodyCache

HEADERS = [("content-type", b"application/avro")]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 2), st.integers(0, 30), st.integers(0, 300)),
        st.tuples(st.just("take"), st.integers(0, 2), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("drop"), st.integers(0, 2), st.just(0), st.just(0)),
    ),
    max_size=80,
)


def _value(partition: int, offset: int, size: int) -> bytes:
    """What the record at an offset holds: the same bytes every time it is put."""
    return bytes([partition * 31 + offset & 0xFF]) * (size % 7 + offset % 5 * 60)


@given(ops, st.integers(0, 2000))
def test_the_cache_agrees_with_a_model_and_stays_in_budget(
    operations: list[tuple[str, int, int, int]], budget: int
) -> None:
    cache = BodyCache(budget)
    model: OrderedDict[tuple[int, int], bytes] = OrderedDict()
    for op, partition, offset, size in operations:
        if op == "put":
            value = _value(partition, offset, size)
            cache.put(partition, offset, value, HEADERS)
            if len(value) + ENTRY_OVERHEAD <= budget and (partition, offset) not in model:
                model[(partition, offset)] = value
                while sum(len(v) + ENTRY_OVERHEAD for v in model.values()) > budget:
                    model.popitem(last=False)
        elif op == "take":
            got = cache.take(partition, offset)
            want = model.pop((partition, offset), None)
            assert got == (None if want is None else (want, HEADERS))
        else:
            cache.drop([partition])
            for key in [k for k in model if k[0] == partition]:
                del model[key]
        assert cache.used == sum(len(v) + ENTRY_OVERHEAD for v in model.values()) <= budget
        assert len(cache) == len(model)


def test_a_budget_of_zero_keeps_nothing_and_a_record_is_taken_once() -> None:
    off = BodyCache(0)
    off.put(0, 1, b"body", HEADERS)
    assert off.take(0, 1) is None and len(off) == 0

    cache = BodyCache(3 * (ENTRY_OVERHEAD + 4))
    for offset in range(4):
        cache.put(0, offset, b"b%03d" % offset, HEADERS)
    assert cache.evicted == 1 and cache.take(0, 0) is None  # the oldest went first
    assert cache.take(0, 3) == (b"b003", HEADERS)
    assert cache.take(0, 3) is None
    cache.put(1, 3, b"x" * (3 * ENTRY_OVERHEAD + 13), HEADERS)  # larger than the budget
    assert cache.take(1, 3) is None and cache.take(0, 1) == (b"b001", HEADERS)

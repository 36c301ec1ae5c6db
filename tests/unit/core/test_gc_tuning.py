"""The survivor freezer: live state leaves the collector's view, cyclic garbage still goes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from inboxstream.core.gc_tuning import SurvivorFreezer


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def thawed() -> Iterator[None]:
    """The test freezes the whole process's heap: give it back to the collector after."""
    try:
        yield
    finally:
        gc.unfreeze()


def cyclic_garbage() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_survivors_are_frozen_after_each_unit_of_work(thawed: None) -> None:
    freezer = SurvivorFreezer(check_every=1000)
    kept = [Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    freezer.work_done()
    assert gc.get_freeze_count() >= before + len(kept)
    gone = cyclic_garbage()
    freezer.work_done()
    gc.collect()  # a frozen cycle is out of the collector's reach...
    assert gone() is not None
    assert freezer.collections == 0


def test_cycles_frozen_with_the_state_are_collected_once_it_doubled(thawed: None) -> None:
    freezer = SurvivorFreezer(check_every=2, floor=1000)
    gone = cyclic_garbage()
    freezer.work_done()
    state: list[Node] = []
    for _ in range(40):
        if freezer.collections:
            break
        state += [Node() for _ in range(gc.get_freeze_count() // 10 + 1000)]
        freezer.work_done()
    # ...until the frozen set doubled: then one full collection frees it, the state stays
    assert freezer.collections >= 1
    assert gone() is None
    assert all(isinstance(n, Node) for n in state)

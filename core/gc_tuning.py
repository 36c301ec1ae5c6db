"""Cyclic garbage collection tuned for the streaming loops.

The sink, the processor and the producer allocate millions of short-lived dicts, lists and
strings (one decoded record is ~30 objects), nearly all freed by reference counting. With the
default threshold (a young collection every 700 net allocations) the collector runs thousands
of times a second and each pass walks the batch still held: bench/sink.py measured 25% of the
sink's decode-and-map time in it. So, as long-running services commonly do: everything
imported so far is frozen out of the collector's view, and young collections run every
50,000 allocations. Cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000

_tuned = False


def tune_for_streaming() -> None:
    """Idempotent; call once a long-running command has imported what it needs."""
    global _tuned
    if _tuned:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    _tuned = True


class SurvivorFreezer:
    """Keeps a long-lived, growing heap (the stream processor's state) out of the collector's
    passes: after each unit of work the objects alive are frozen, so young collections walk
    only what the next unit allocates, and the full collections - each a walk over the whole
    state, and the interpreter starts one whenever the old generation grew by a quarter - stop.
    bench/engine_cpu measured the collector at 9-11% of the processor's CPU per event.

    Frozen objects are still freed by reference counting; only cyclic garbage frozen with them
    waits. So once the frozen set has doubled since the last full collection, everything is
    unfrozen, collected once and frozen again: the same amortised cost per object as the
    interpreter's own policy, four times less often, and garbage in cycles bounded by the
    live heap. The frozen set is counted every ``check_every`` calls (counting walks it).
    The sink uses it too, a unit being one batch (``sinks.runner``).

    Young collections go too, up to ``young_threshold`` objects a unit: the young generation
    only ever holds what the current unit allocated, and what it keeps is frozen at its end
    anyway, so a young collection in the middle walks it for nothing (the processor's shares
    make no cyclic garbage: every one of them collected nothing, and they took 21% of the
    compiled record path's CPU in bench/engine_cpu). Cycles a unit leaves wait for the
    doubling rule above, as those frozen with the survivors do.
    """

    def __init__(
        self, *, check_every: int = 64, floor: int = 200_000, young_threshold: int = 1_000_000
    ) -> None:
        self.check_every = check_every
        self.floor = floor
        self.young_threshold = young_threshold
        self.collections = 0
        self._calls = 0
        self._after_collect = 0

    def work_done(self) -> None:
        gc.freeze()
        young, middle, old = gc.get_threshold()
        if young < self.young_threshold:  # set here, not at start: tune_for_streaming may follow
            gc.set_threshold(self.young_threshold, middle, old)
        self._calls += 1
        if self._calls % self.check_every:
            return
        frozen = gc.get_freeze_count()
        if frozen > 2 * max(self._after_collect, self.floor):
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.collections += 1
            self._after_collect = gc.get_freeze_count()

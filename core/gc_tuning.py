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

"""What processes cost, for the benchmarks: CPU seconds and memory summed over a set of
processes, each read once, a process that ended meanwhile skipped (a worker replaced, a
forkserver gone)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import psutil


def tree(
    root: psutil.Process, keep: Callable[[psutil.Process], bool] | None = None
) -> list[psutil.Process]:
    """``root`` and its descendants that ``keep`` accepts (all of them without it): a
    benchmark's services (Kafka, Dovecot) are its children too, and are usually not wanted."""
    found = [root]
    for child in root.children(recursive=True):
        try:
            if keep is None or keep(child):
                found.append(child)
        except psutil.Error:
            pass
    return found


def is_pool_process(proc: psutil.Process) -> bool:
    """A parse worker or its forkserver (``multiprocessing`` in the command line)."""
    return "multiprocessing" in " ".join(proc.cmdline())


def _total(procs: Iterable[psutil.Process], read: Callable[[psutil.Process], float]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += read(proc)
        except (psutil.Error, AttributeError):  # AttributeError: no PSS on this platform
            pass
    return total


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    """User plus system CPU seconds."""
    return _total(procs, lambda p: sum(p.cpu_times()[:2]))


def rss(procs: Iterable[psutil.Process]) -> int:
    return int(_total(procs, lambda p: p.memory_info().rss))


def pss(procs: Iterable[psutil.Process]) -> int:
    """Proportional set size: a page the processes share (what a forkserver preloaded before
    forking its workers) counted once in all, where a sum of RSS counts it in each."""
    return int(_total(procs, lambda p: p.memory_full_info().pss))

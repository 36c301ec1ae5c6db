"""Helper processes that cannot outlive the process they work for.

A worker pool's processes block on their task queue; when the parent is killed with SIGKILL
nothing tells them, and they would hold their memory forever. ``exit_with(pid)`` (called in
each worker as it starts) ties the worker's life to ``pid`` two ways:

* a thread waits on a pidfd of ``pid`` (Linux 5.3+; a poll of ``kill(pid, 0)`` once a second
  elsewhere) and ends the worker the moment ``pid`` is gone, whoever the worker's own parent
  is (a forkserver sits between them);
* on Linux, ``PR_SET_PDEATHSIG`` also has the kernel kill the worker when its direct parent
  dies, even if the thread never gets to run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """Process ``pid`` exists and is not a zombie (one that exited but was not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait_for_exit(pid: int) -> None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = None
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll(60_000):
                pass
            return
    while pid_alive(pid):
        time.sleep(1.0)


def exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` has exited (see the module doc)."""
    _set_parent_death_signal()
    if not pid_alive(pid):
        os._exit(1)

    def watch() -> None:
        _wait_for_exit(pid)
        # No cleanup is owed to a parent that is gone: leave at once, mid-task or not.
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new soft
    limit. A producer holding two IMAP connections per inbox needs thousands of descriptors,
    and the usual soft limit is 1,024 while the hard one is far higher."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft

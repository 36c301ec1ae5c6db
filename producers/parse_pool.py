"""MIME parsing and Avro encoding of backfill batches, inline or in worker processes.

Parsing is pure CPU in Python (the stdlib email parser holds the GIL), so the only way to use
a second core is another process: raw bytes go in (through shared memory, below), ready Avro
values come out (as plain tuples), and the event loop meanwhile keeps reading IMAP and talking
to Kafka. ``workers=0`` runs everything inline,
with exactly the same results (both paths call ``producers.encode.encode_chunk``).

Workers start from a forkserver, not by forking the running event loop process (its threads
and sockets must not be copied). A pool that breaks (a worker killed, e.g. by the OOM killer)
is replaced, and the batch that hit it is encoded inline, so a backfill never stops over it.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from multiprocessing import shared_memory
from operator import attrgetter
from pathlib import Path
from typing import Any

from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.lifetime import exit_with
from inboxstream.producers.encode import EncodedMessage, EncodedRecord, encode_chunk
from inboxstream.producers.parse import FetchedMessage
from inboxstream.schemas import serde

log = logging.getLogger(__name__)

#: Messages per task sent to a worker at most; a batch is cut into one task per worker below
#: that (500 messages, 2 workers: two tasks of 250). Fewer, longer tasks mean fewer wakeups
#: on a box where the workers share two cores with the event loop, Dovecot and Kafka:
#: measured on 50,000 messages, 64 -> 250 took the backfill from 6,439/6,431 to 6,755/6,689
#: msg/s (the box 90% -> 94% busy). A task holds no more bodies than the FETCH batch it
#: comes from, which the pipeline holds anyway.
CHUNK = 256


def _worker_start(parent_pid: int, schema_ids: list[tuple[str, int]]) -> None:
    """Ctrl-C reaches the whole process group: the workers ignore it and leave the shutdown to
    the service, which closes the pool once its folders have stopped. A parent killed outright
    (kill -9, the OOM killer) takes its workers with it. The parent's schema registry ids come
    along, so the workers frame values exactly as the parent does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with(parent_pid)
    tune_for_streaming()
    serde.WIRE.restore(schema_ids)


@contextmanager
def _no_main_module() -> Iterator[None]:
    """While a worker process starts, the parent's ``__main__`` is a blank module.

    multiprocessing has every new worker run the parent's main module again (as
    ``__mp_main__``), so that functions defined there unpickle. Ours never are, and the main
    module is the heaviest thing there is: the ``inboxstream`` console script imports the
    whole CLI (aiokafka, chDB's client, the sinks...), a benchmark its own harness. Measured:
    a worker under the console script 63 MB RSS, 38 MB without.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Executor(ProcessPoolExecutor):
    """A process pool whose workers start without re-running the parent's main module."""

    def _spawn_process(self) -> None:
        # The one place ProcessPoolExecutor starts a process (at first submits, and for a
        # replaced worker), so the swap lasts a process start, not every submitted chunk.
        # A private method: the parse-pool test that checks the main module is not run
        # again fails if a Python release renames it.
        with _no_main_module():
            super()._spawn_process()  # type: ignore[misc]


# --- raw bytes through shared memory ----------------------------------------------------------
#
# A task's bodies (~5 KB a message, 1.3 MB a task of 250) went through the pool's pipe
# pickled: pickling in the event loop, a feeder thread writing 64 KB at a time, the worker
# reading them back into a growing buffer and unpickling. Measured with workers that do
# nothing else, that transport alone cost ~9 us a message on each side. Now the event loop
# copies the bodies into a shared-memory segment (one memcpy each) and only the small
# per-message fields go through the pipe; the worker slices each body out of its mapping.

#: Segments kept for reuse (each as big as the biggest task it carried); more are unlinked.
_KEEP_SEGMENTS = 8
_SHM_DIR = Path("/dev/shm")  # POSIX shared memory on Linux, where SharedMemory creates it


@dataclass
class _Segments:
    """The event loop's shared-memory segments: one per task under way, reused after."""

    free: list[shared_memory.SharedMemory] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # released from pool threads

    def take(self, size: int) -> shared_memory.SharedMemory:
        with self.lock:
            for i, seg in enumerate(self.free):
                if seg.size >= size:
                    return self.free.pop(i)
        # room to grow: the next task of a folder is about as big
        return shared_memory.SharedMemory(create=True, size=max(size + size // 4, 1 << 20))

    def give_back(self, seg: shared_memory.SharedMemory) -> None:
        with self.lock:
            self.free.append(seg)
            self.free.sort(key=lambda s: s.size)
            extra = self.free[:-_KEEP_SEGMENTS] if len(self.free) > _KEEP_SEGMENTS else []
            del self.free[: len(extra)]
        for seg in extra:
            _unlink(seg)

    def close(self) -> None:
        with self.lock:
            gone, self.free = self.free, []
        for seg in gone:
            _unlink(seg)


def _unlink(seg: shared_memory.SharedMemory) -> None:
    seg.close()
    try:
        seg.unlink()
    except FileNotFoundError:
        pass


#: A message crosses as its FetchedMessage fields in declaration order (read in one C call),
#: the body's place in the segment standing where the body was.
_NAMES = [f.name for f in fields(FetchedMessage)]
_FIELDS = attrgetter(*_NAMES)
_RAW = _NAMES.index("raw")
_Flat = list[tuple[int, tuple[tuple[str, bytes, str, bool], ...]]]


def _pack(chunk: list[FetchedMessage], seg: shared_memory.SharedMemory) -> list[list[Any]]:
    buf = seg.buf
    assert buf is not None
    metas: list[list[Any]] = []
    at = 0
    for m in chunk:
        end = at + len(m.raw)
        buf[at:end] = m.raw
        meta = list(_FIELDS(m))
        meta[_RAW] = (at, end)
        metas.append(meta)
        at = end
    return metas


#: In a worker: the segments it has mapped, by name, with the file's inode (the event loop
#: reuses a few; a name unlinked and made again, however unlikely, is another segment).
_mapped: dict[str, tuple[int, mmap.mmap]] = {}


def _mapping(name: str) -> mmap.mmap:
    """The segment mapped read-only. Not through ``SharedMemory(name)``: on Python 3.11 that
    registers the segment with the resource tracker the worker shares with the event loop,
    which then unlinks it twice or warns of a leak at exit."""
    fd = os.open(_SHM_DIR / name.lstrip("/"), os.O_RDONLY)
    try:
        inode = os.fstat(fd).st_ino
        found = _mapped.get(name)
        if found is not None and found[0] == inode:
            return found[1]
        if found is not None:
            _mapped.pop(name)[1].close()
        if len(_mapped) >= 2 * _KEEP_SEGMENTS:  # the event loop has unlinked the oldest
            _mapped.pop(next(iter(_mapped)))[1].close()
        view = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        _mapped[name] = (inode, view)
        return view
    finally:
        os.close(fd)


def _encode_shared(
    name: str, metas: list[list[Any]], log_attachments: bool, producer: str
) -> _Flat:
    """A worker's task: the bodies from the segment, the results as plain tuples."""
    view = _mapping(name)
    chunk = []
    for meta in metas:
        start, end = meta[_RAW]
        meta[_RAW] = view[start:end]
        chunk.append(FetchedMessage(*meta))
    # The bodies are copied out: drop the pages from this process's resident set (the
    # segment keeps them), or every worker would count every segment it ever read.
    view.madvise(mmap.MADV_DONTNEED)
    return [
        (m.uid, tuple(tuple(r) for r in m.records))  # type: ignore[misc]
        for m in encode_chunk(chunk, log_attachments, producer)
    ]


def _unflat(flat: _Flat) -> list[EncodedMessage]:
    return [
        EncodedMessage(uid, tuple(EncodedRecord._make(r) for r in records)) for uid, records in flat
    ]


def _ready() -> int:
    """A no-op task: a worker that runs it has started (``ParsePool.start``)."""
    return os.getpid()


class ParsePool:
    """Encodes FETCH batches; shared by every folder of the process (one pool, many inboxes)."""

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError("parse workers must be 0 (inline) or more")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        #: ``start`` is bringing the workers up: batches are encoded inline meanwhile
        self._starting = False
        self._segments = _Segments()
        #: bodies go to the workers through shared memory (off where it cannot be had)
        self._shared = True

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            ctx = multiprocessing.get_context("forkserver")
            # Nothing preloaded: each worker imports the parser itself. A preloading forkserver
            # holds the whole parse stack too (cavro brings numpy), and its pages did not stay
            # shared (refcounts touch them): measured, the pool's RSS 178 -> 155 MB, PSS the
            # same 210 MB, throughput the same. ``start`` takes the imports off the clock.
            ctx.set_forkserver_preload([])
            self._executor = _Executor(
                self.workers,
                mp_context=ctx,
                initializer=_worker_start,
                initargs=(os.getpid(), serde.WIRE.snapshot()),
            )
        return self._executor

    async def start(self) -> None:
        """Start the forkserver and every worker now, so the first batch does not wait for
        them (each worker imports the parser and the schemas first: half a second or more
        on a busy box). Submitting blocks while the forkserver starts, so it happens in
        a thread, not on the event loop. Until they are up, batches are encoded inline (the
        same function), not queued behind the start. Optional: without it, the first batch
        starts them."""
        if self.workers == 0:
            return
        pool = self._pool()
        self._starting = True
        try:
            futures = await asyncio.to_thread(
                lambda: [pool.submit(_ready) for _ in range(self.workers)]
            )
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except BrokenProcessPool as exc:
            log.error("parse workers did not start (%s): the first batch tries again", exc)
            self._discard(pool)
        finally:
            self._starting = False

    async def encode(
        self, batch: list[FetchedMessage], *, log_attachments: bool = True, producer: str = ""
    ) -> list[EncodedMessage]:
        """Both events of every message in the batch, in batch order."""
        if self.workers == 0 or not batch or self._starting:
            return encode_chunk(batch, log_attachments, producer)
        size = max(1, min(CHUNK, -(-len(batch) // self.workers)))
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        pool = self._pool()
        try:
            parts = await asyncio.gather(
                *(self._submit(pool, c, log_attachments, producer) for c in chunks)
            )
        except BrokenProcessPool as exc:
            log.error("parse worker died (%s): new pool, this batch encoded inline", exc)
            self._discard(pool)
            return encode_chunk(batch, log_attachments, producer)
        return [m for part in parts for m in part]

    def _submit(
        self,
        pool: ProcessPoolExecutor,
        chunk: list[FetchedMessage],
        log_attachments: bool,
        producer: str,
    ) -> asyncio.Future[list[EncodedMessage]]:
        """One task: bodies through a shared-memory segment, given back when the worker is
        done with it (not when the caller stops waiting: a cancelled task still reads it)."""
        loop = asyncio.get_running_loop()
        if not self._shared:
            return loop.run_in_executor(pool, encode_chunk, chunk, log_attachments, producer)
        try:
            seg = self._segments.take(sum(len(m.raw) for m in chunk))
        except OSError as exc:  # no /dev/shm, or it is full: the pipe carries the bodies
            log.warning("shared memory unavailable (%s): bodies go through the pipe", exc)
            self._shared = False
            return loop.run_in_executor(pool, encode_chunk, chunk, log_attachments, producer)
        try:
            metas = _pack(chunk, seg)
            done = pool.submit(_encode_shared, seg.name, metas, log_attachments, producer)
        except BaseException:
            self._segments.give_back(seg)
            raise
        done.add_done_callback(lambda _: self._segments.give_back(seg))
        return asyncio.ensure_future(_flat_result(asyncio.wrap_future(done, loop=loop)))

    def _discard(self, broken: ProcessPoolExecutor) -> None:
        """Drop the pool that broke, never a fresh one another folder has started since."""
        broken.shutdown(wait=False, cancel_futures=True)
        if self._executor is broken:
            self._executor = None

    def close(self) -> None:
        """Stop the workers (waits for running chunks; call once the syncs are done)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._segments.close()


async def _flat_result(done: asyncio.Future[_Flat]) -> list[EncodedMessage]:
    return _unflat(await done)


INLINE = ParsePool(0)

"""The record path (``processors.record_path``) in a process of its own.

One stream-processor instance is two processes: the driver, whose event loop fetches, sends and
commits (aiokafka's record decoding and batch building, compression, transactions), and this
one, which holds the partitions' state and turns each share of a batch into the records to
send. A share crosses as plain tuples (topic, partition, offset, value, headers); the records
to send come back the same way. While the engine works on one partition's share, the driver
sends and commits the others' on the other core, which one process cannot do: the record path
and the Kafka work each take most of a core at full speed.

The protocol is framed pickles over the child's stdin and stdout (8-byte length, then the
pickle): requests ``(id, op, args)``, replies ``(id, ok, value, counts)``, one at a time in the
order sent; ``counts`` is what the engine counted meanwhile, merged into the driver's stats.
The child's own stdout is pointed at its stderr first, so a stray print cannot corrupt a
frame. Each side writes and reads its frames on threads of their own, with blocking calls on
pipes widened to 1 MB: a share is a pickle of megabytes, and through the event loops every
64 KB was a turn of both loops, so the engine waited 30-60 ms a share for its input while the
driver's loop was busy sending (measured; the copy itself runs without the GIL).

The child exits when its stdin closes, so a driver killed with -9 takes it along; a child that
dies fails the instance (``EngineProcessDiedError``) rather than let it run on without state:
nothing it processed since the last commit is committed, and a restart restores from the
changelogs.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inboxstream.core.batches import Headers
from inboxstream.core.kafka import Failure
from inboxstream.core.settings import KafkaSettings
from inboxstream.processors.body_cache import BODY_CACHE_BYTES
from inboxstream.processors.exceptions import EngineProcessDiedError, EngineProcessError
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.record_path import Incoming, RecordPath, Row, ShareOut
from inboxstream.processors.topology import ProcessorTopics

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<Q")
#: Distinct header tuples ``EngineProcess.handle`` remembers before it starts afresh.
MAX_HEADER_KINDS = 1024
#: The pipe buffer asked for (the kernel caps it at fs.pipe-max-size, 1 MB by default).
_PIPE_SIZE = 16 * 1024 * 1024


def _widen(fd: int) -> None:
    """Give a pipe the largest buffer an unprivileged process may, not 64 KB: fewer wake-ups
    of the reading and the writing thread per share."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(limit, _PIPE_SIZE))
    except OSError:
        pass  # a smaller buffer only costs wake-ups


def _read_exactly(fd: int, size: int) -> bytearray | None:
    """``size`` bytes from a blocking ``fd``; None when it ends first (the other side is gone)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return None
        got += n
    return buf


def read_frame(fd: int) -> bytearray | None:
    """One frame's pickle, or None at the end of the stream."""
    head = _read_exactly(fd, _FRAME.size)
    if head is None:
        return None
    (size,) = _FRAME.unpack(head)
    return _read_exactly(fd, size)


def write_frame(fd: int, data: bytes) -> None:
    """Length and pickle, whole (``writev`` may take part of them at a time)."""
    views = [v for v in (memoryview(_FRAME.pack(len(data))), memoryview(data)) if len(v)]
    while views:
        n = os.writev(fd, views)
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


class FrameWriter:
    """Writes frames to ``fd`` on a thread of its own, in the order given; ``close`` writes
    what is queued, then closes ``fd`` (the reader sees the end)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.error: OSError | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        """Queue one frame; raises the write error once the other end is gone."""
        if self.error is not None:
            raise self.error
        self._queue.put(data)

    def close(self) -> None:
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self.error is not None:
                continue  # the reader is gone: what is left goes nowhere
            try:
                write_frame(self.fd, data)
            except OSError as exc:  # EPIPE: the other process ended
                self.error = exc
        try:
            os.close(self.fd)
        except OSError:
            pass


def _to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop`` from a frame thread; dropped once the loop is
    closed (nobody waits for it any more: the process is ending)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def read_frames(fd: int, deliver: Callable[[bytearray | None], None]) -> None:
    """Hand each frame read from ``fd`` to ``deliver``, then None at the end (a thread's
    target: ``deliver`` must be safe to call from it)."""
    try:
        while (frame := read_frame(fd)) is not None:
            deliver(frame)
    except OSError:
        pass
    deliver(None)


class EngineProcess:
    """The driver's handle on the engine process: the same calls as ``RecordPath``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: ProcessorTopics,
        algorithm: Algorithm,
        counts: Counter[str],
        body_cache_bytes: int = BODY_CACHE_BYTES,
    ) -> None:
        level = logging.getLogger().getEffectiveLevel()
        self._init = (kafka, topics, algorithm, level, body_cache_bytes)
        self.counts = counts
        self.partitions: set[int] = set()  # the partitions whose state the child holds
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: FrameWriter | None = None
        self._replies: threading.Thread | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._died: EngineProcessDiedError | None = None
        self._header_kinds: dict[Headers, Headers] = {}

    async def start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inboxstream.processors.engine_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        # The threads own the fds from here (the file objects must not close them too).
        self._requests = FrameWriter(os.dup(proc.stdin.fileno()), "engine-requests")
        proc.stdin.close()
        loop = asyncio.get_running_loop()
        self._replies = threading.Thread(
            target=self._read_replies,
            args=(proc, loop),
            name="engine-replies",
            daemon=True,
        )
        self._replies.start()
        await self._call("init", *self._init)

    def check(self) -> None:
        """Raise ``EngineProcessDiedError`` once the child is gone."""
        if self._died is not None:
            raise self._died

    async def restore(self, partitions: set[int]) -> None:
        held: set[int] = await self._call("restore", partitions)
        self.partitions = held

    async def drop(self, partitions: set[int]) -> None:
        self.partitions -= partitions  # at once: nothing more is handed over for them
        if partitions and self._died is None:
            await self._call("drop", partitions)

    async def handle(self, partition: int, records: Sequence[Incoming]) -> ShareOut:
        # ``Row`` tuples, each record's headers the one tuple of their kind: a topic's records
        # carry the same few headers, and the pickle then writes them once a share, not as
        # a fresh list of tuples a record (0.45 us each way a record, measured, against 0.1),
        # and the decoder in the child knows them again by identity
        kinds = self._header_kinds
        if len(kinds) > MAX_HEADER_KINDS:
            kinds.clear()  # records with ever new headers: keep the table small
        rows: list[Row] = []
        for rec in records:
            fresh = tuple(rec.headers)
            headers = kinds.setdefault(fresh, fresh)
            rows.append((rec.topic, rec.partition, rec.offset, rec.value, headers))
        out: ShareOut = await self._call("handle", partition, rows)
        return out

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._died is None and proc.poll() is None:
            try:
                await asyncio.wait_for(self._call("close"), timeout=10)
            except (EngineProcessDiedError, TimeoutError):
                pass
        self._proc = None
        if self._requests is not None:
            self._requests.close()  # the child reads the end of its stdin and exits
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=10)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        if self._replies is not None:
            await asyncio.to_thread(self._replies.join)
        if self._requests is not None:
            await asyncio.to_thread(self._requests.join)

    async def _call(self, op: str, *args: Any) -> Any:
        self.check()
        assert self._requests is not None, "engine process not started"
        rid = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._pending[rid] = reply
        try:
            self._requests.put(pickle.dumps((rid, op, args), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            self._pending.pop(rid, None)
            gone = EngineProcessDiedError(f"engine process unreachable: {exc}")
            raise self._died or gone from exc
        return await reply

    def _read_replies(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        """The reply thread: each reply unpickled here and handed to the loop, then, at the
        end of the child's stdout, its exit."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()

        def deliver(frame: bytearray | None) -> None:
            if frame is None:
                _to_loop(loop, self._gone, proc.wait())
            else:
                _to_loop(loop, self._deliver, *pickle.loads(frame))

        read_frames(fd, deliver)
        proc.stdout.close()

    def _deliver(self, rid: int, ok: bool, value: Any, counts: Counter[str] | None) -> None:
        if counts:
            self.counts.update(counts)
        reply = self._pending.pop(rid)
        if reply.done():
            return  # its caller was cancelled
        if ok:
            reply.set_result(value)
        else:
            failure: Failure = value
            reply.set_exception(
                EngineProcessError(
                    f"engine process: {failure.class_name}: {failure.message}\n{failure.stacktrace}"
                )
            )

    def _gone(self, code: int) -> None:
        self._died = EngineProcessDiedError(f"the engine process exited (code {code})")
        self.partitions = set()
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(self._died)
        self._pending.clear()
        if code != 0:
            log.error("%s", self._died)


class EnginePool:
    """Several engine processes, partition N's state in process N mod their number: shares
    of partitions in different processes are worked on at the same time."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: ProcessorTopics,
        algorithm: Algorithm,
        counts: Counter[str],
        body_cache_bytes: int = BODY_CACHE_BYTES,
        *,
        processes: int,
    ) -> None:
        self.engines = [
            EngineProcess(kafka, topics, algorithm, counts, body_cache_bytes)
            for _ in range(processes)
        ]

    def _of(self, partition: int) -> EngineProcess:
        return self.engines[partition % len(self.engines)]

    def _by_engine(self, partitions: set[int]) -> dict[int, set[int]]:
        split: dict[int, set[int]] = {}
        for p in partitions:
            split.setdefault(p % len(self.engines), set()).add(p)
        return split

    @property
    def partitions(self) -> set[int]:
        return set().union(*(engine.partitions for engine in self.engines))

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self.engines))

    def check(self) -> None:
        for engine in self.engines:
            engine.check()

    async def restore(self, partitions: set[int]) -> None:
        split = self._by_engine(partitions)
        await asyncio.gather(*(self.engines[i].restore(ps) for i, ps in split.items()))

    async def drop(self, partitions: set[int]) -> None:
        split = self._by_engine(partitions)
        await asyncio.gather(*(self.engines[i].drop(ps) for i, ps in split.items()))

    async def handle(self, partition: int, records: Sequence[Incoming]) -> ShareOut:
        return await self._of(partition).handle(partition, records)

    async def close(self) -> None:
        await asyncio.gather(*(engine.close() for engine in self.engines))


# --- the child ------------------------------------------------------------------------------


async def _serve(requests: asyncio.Queue[bytearray | None], replies: FrameWriter) -> None:
    path: RecordPath | None = None
    while (frame := await requests.get()) is not None:
        rid, op, args = pickle.loads(frame)
        del frame
        ok = True
        value: Any = None
        try:
            if op == "init":
                kafka, topics, algorithm, level, body_cache_bytes = args
                logging.basicConfig(level=level, stream=sys.stderr)
                path = RecordPath(kafka, topics, algorithm, body_cache_bytes=body_cache_bytes)
            elif path is None:
                raise RuntimeError(f"{op} before init")
            elif op == "handle":
                partition, rows = args
                value = await path.handle_rows(partition, rows)
            elif op == "restore":
                await path.restore(*args)
                value = path.partitions
            elif op == "drop":
                await path.drop(*args)
            elif op != "close":
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            ok, value = False, Failure.of(exc)
        counts: Counter[str] | None = None
        if path is not None and path.counts:
            counts = Counter(path.counts)
            path.counts.clear()
        try:
            replies.put(pickle.dumps((rid, ok, value, counts), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            break  # the driver is gone
        if op == "close":
            break
    if path is not None:
        await path.close()


async def _child_main(reply_fd: int) -> None:
    from inboxstream.core.gc_tuning import tune_for_streaming

    tune_for_streaming()
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[bytearray | None] = asyncio.Queue()

    threading.Thread(
        target=read_frames,
        args=(0, lambda frame: _to_loop(loop, requests.put_nowait, frame)),
        name="requests",
        daemon=True,
    ).start()
    replies = FrameWriter(reply_fd, "replies")
    try:
        await _serve(requests, replies)
    finally:
        replies.close()
        await asyncio.to_thread(replies.join, 10)


def main() -> None:
    # Frames alone on the reply pipe: whatever prints to stdout goes to stderr instead.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    _widen(0)
    _widen(reply_fd)
    # Ctrl-C reaches the whole process group; the driver decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_child_main(reply_fd))


if __name__ == "__main__":
    main()

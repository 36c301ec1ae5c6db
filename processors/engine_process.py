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
frame. The child exits when its stdin closes, so a driver killed with -9 takes it along; a
child that dies fails the instance (``EngineProcessDiedError``) rather than let it run on without
state: nothing it processed since the last commit is committed, and a restart restores from
the changelogs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from inboxstream.core.kafka import Failure
from inboxstream.core.settings import KafkaSettings
from inboxstream.processors.exceptions import EngineProcessDiedError, EngineProcessError
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.record_path import Consumed, Incoming, RecordPath, ShareOut
from inboxstream.processors.topology import ProcessorTopics

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<Q")
#: Stream buffer limit: shares are megabytes, and a small limit only adds pause/resume turns.
_LIMIT = 16 * 1024 * 1024


class EngineProcess:
    """The driver's handle on the engine process: the same calls as ``RecordPath``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: ProcessorTopics,
        algorithm: Algorithm,
        counts: Counter[str],
    ) -> None:
        self._init = (kafka, topics, algorithm, logging.getLogger().getEffectiveLevel())
        self.counts = counts
        self.partitions: set[int] = set()  # the partitions whose state the child holds
        self._proc: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._died: EngineProcessDiedError | None = None
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inboxstream.processors.engine_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LIMIT,
        )
        self._replies = asyncio.create_task(self._read_replies())
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
        share = [Consumed.of(rec) for rec in records]
        out: ShareOut = await self._call("handle", partition, share)
        return out

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._died is None and proc.returncode is None:
            try:
                await asyncio.wait_for(self._call("close"), timeout=10)
            except (EngineProcessDiedError, TimeoutError):
                pass
        self._proc = None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._replies is not None:
            await self._replies

    async def _call(self, op: str, *args: Any) -> Any:
        self.check()
        proc = self._proc
        assert proc is not None and proc.stdin is not None, "engine process not started"
        rid = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._pending[rid] = reply
        data = pickle.dumps((rid, op, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._write_lock:  # frames of concurrent calls must not interleave
            try:
                proc.stdin.write(_FRAME.pack(len(data)))
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                self._pending.pop(rid, None)
                gone = EngineProcessDiedError(f"engine process unreachable: {exc}")
                raise self._died or gone from exc
        return await reply

    async def _read_replies(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                (size,) = _FRAME.unpack(await proc.stdout.readexactly(_FRAME.size))
                rid, ok, value, counts = pickle.loads(await proc.stdout.readexactly(size))
                if counts:
                    self.counts.update(counts)
                reply = self._pending.pop(rid)
                if reply.done():
                    continue  # its caller was cancelled
                if ok:
                    reply.set_result(value)
                else:
                    failure: Failure = value
                    reply.set_exception(
                        EngineProcessError(
                            f"engine process: {failure.class_name}: {failure.message}\n"
                            f"{failure.stacktrace}"
                        )
                    )
        except asyncio.IncompleteReadError:
            pass
        code = await proc.wait()
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
        processes: int,
    ) -> None:
        self.engines = [EngineProcess(kafka, topics, algorithm, counts) for _ in range(processes)]

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


async def _serve(requests: asyncio.StreamReader, replies: asyncio.StreamWriter) -> None:
    path: RecordPath | None = None
    while True:
        try:
            (size,) = _FRAME.unpack(await requests.readexactly(_FRAME.size))
            rid, op, args = pickle.loads(await requests.readexactly(size))
        except asyncio.IncompleteReadError:
            break  # the driver is gone
        ok = True
        value: Any = None
        try:
            if op == "init":
                kafka, topics, algorithm, level = args
                logging.basicConfig(level=level, stream=sys.stderr)
                path = RecordPath(kafka, topics, algorithm)
            elif path is None:
                raise RuntimeError(f"{op} before init")
            elif op == "handle":
                value = await path.handle(*args)
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
        data = pickle.dumps((rid, ok, value, counts), protocol=pickle.HIGHEST_PROTOCOL)
        replies.write(_FRAME.pack(len(data)))
        replies.write(data)
        await replies.drain()
        if op == "close":
            break
    if path is not None:
        await path.close()


async def _child_main(reply_fd: int) -> None:
    from inboxstream.core.gc_tuning import tune_for_streaming

    tune_for_streaming()
    loop = asyncio.get_running_loop()
    requests = asyncio.StreamReader(limit=_LIMIT)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(requests), os.fdopen(0, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(reply_fd, "wb", buffering=0)
    )
    replies = asyncio.StreamWriter(transport, protocol, None, loop)
    await _serve(requests, replies)
    transport.close()


def main() -> None:
    # Frames alone on the reply pipe: whatever prints to stdout goes to stderr instead.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    # Ctrl-C reaches the whole process group; the driver decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_child_main(reply_fd))


if __name__ == "__main__":
    main()

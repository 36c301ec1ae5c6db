"""The parse pool (worker processes) gives exactly what inline parsing gives, for good and
malformed mail, in batch order; and one unencodable message still yields its identity."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.producers.encode import EncodedMessage, encode_message
from inboxstream.producers.parse import FetchedMessage
from inboxstream.producers.parse_pool import ParsePool
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import BodyEvent, MessageEvent
from inboxstream.schemas.serde import serde_for

MALFORMED = [
    b"",
    b"no header block at all",
    b"Subject: =?utf-8?q?broken\r\nContent-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\n",
    b"From: <<<\r\nDate: yesterday\r\nMessage-ID: no brackets\r\n\r\nbody",
    b"Subject: caf\xe9\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe",
]


def _batch() -> list[FetchedMessage]:
    raws = [m.raw for m in itertools.islice(generate_mailbox("o@x.test", threads=40), 150)]
    raws[10:10] = MALFORMED
    return [
        FetchedMessage("i@x.test", "INBOX", "inbox", 7, uid, raw)
        for uid, raw in enumerate(raws, start=1)
    ]


def _decoded(messages: list[EncodedMessage]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Records decoded back, observed_at dropped (it is the wall clock at parse time)."""
    out = []
    for m in messages:
        records = []
        for r in m.records:
            serde = serde_for(MessageEvent if r.topic == "messages" else BodyEvent)
            record = serde.decode_record(r.value, serde.headers())
            record.pop("observed_at")
            records.append({"topic": r.topic, "event_type": r.event_type, **record})
        out.append((m.uid, records))
    return out


async def test_workers_give_what_inline_gives_in_order() -> None:
    batch = _batch()
    inline = await ParsePool(0).encode(batch, log_attachments=True, producer="p")
    pool = ParsePool(2)
    try:
        pooled = await pool.encode(batch, log_attachments=True, producer="p")
        again = await pool.encode(batch[:3], log_attachments=False, producer="p")
    finally:
        pool.close()
    assert [m.uid for m in pooled] == list(range(1, len(batch) + 1))
    assert _decoded(pooled) == _decoded(inline)
    assert all(len(m.records) == 2 for m in pooled)
    assert [r.topic for r in pooled[0].records] == ["messages", "bodies"]
    # malformed mail is published with its parse error, never dropped
    bad = _decoded(pooled)[11][1][0]
    assert bad["parse_error"] and bad["message_id_synthetic"]
    # options reach the workers
    assert all(not rec["attachments_logged"] for _, recs in _decoded(again) for rec in recs[1:])


def _every_field(batch: list[FetchedMessage]) -> list[FetchedMessage]:
    """The batch with every FetchedMessage field set, so none can be lost on the way."""
    when = datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    return [
        dataclasses.replace(
            m,
            folder="[Gmail]/All Mail",
            folder_role="all",
            flags=("\\Seen", "$Label"),
            internal_date=when + timedelta(seconds=m.uid),
            size=len(m.raw),
            modseq=1000 + m.uid,
            gm_msgid=str(9_000_000 + m.uid),
            gm_labels=("\\Inbox", "work"),
        )
        for m in batch
    ]


async def test_bodies_go_through_shared_memory_reused_and_unlinked_at_close() -> None:
    batch = _every_field(_batch())
    inline = await ParsePool(0).encode(batch, producer="p")
    pool = ParsePool(2)
    try:
        first = await pool.encode(batch, producer="p")
        names = {seg.name for seg in pool._segments.free}
        assert len(names) == 2  # one a task, given back when the worker was done
        again = await pool.encode(batch[:40], producer="p")
        assert {seg.name for seg in pool._segments.free} == names  # reused, none new
    finally:
        pool.close()
    assert pool._shared
    assert _decoded(first) == _decoded(inline)
    assert _decoded(again) == _decoded(inline)[:40]
    assert not [n for n in names if (Path("/dev/shm") / n.lstrip("/")).exists()]


async def test_without_shared_memory_the_pipe_carries_the_bodies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = _every_field(_batch())
    inline = await ParsePool(0).encode(batch, producer="p")
    pool = ParsePool(2)

    def full(size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pool._segments, "take", full)
    try:
        pooled = await pool.encode(batch, producer="p")
    finally:
        pool.close()
    assert not pool._shared
    assert _decoded(pooled) == _decoded(inline)


async def test_empty_batch_and_bad_worker_count() -> None:
    assert await ParsePool(2).encode([]) == []
    with pytest.raises(ValueError):
        ParsePool(-1)


async def test_a_dead_worker_pool_is_replaced_and_the_batch_encoded_inline() -> None:
    pool = ParsePool(1)
    batch = _batch()[:5]
    try:
        await pool.encode(batch)
        executor = pool._executor
        assert executor is not None
        for proc in list(executor._processes.values()):  # what the OOM killer would do
            proc.kill()
            proc.join()
        encoded = await pool.encode(batch)
        assert [m.uid for m in encoded] == [1, 2, 3, 4, 5]
        assert pool._executor is None  # discarded; the next batch gets a fresh pool
        assert [m.uid for m in await pool.encode(batch)] == [1, 2, 3, 4, 5]
    finally:
        pool.close()


def test_unencodable_event_is_followed_by_the_identity_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing parse_message builds from real mail is known to fail encoding (it decodes with
    replacement), so the failure is forced: the body event's encoder raises."""

    def refuse(record: object) -> bytes:
        raise EncodeError("inbox.bodies: forced")

    monkeypatch.setattr(serde_for(BodyEvent), "encode_record", refuse)
    raw = b"Message-ID: <a@b>\r\nSubject: ok\r\n\r\nhi"
    encoded = encode_message(FetchedMessage("i@x.test", "INBOX", "inbox", 7, 3, raw))
    assert [r.topic for r in encoded.records] == ["messages", "messages"]
    serde = serde_for(MessageEvent)
    fallback = serde.decode(encoded.records[1].value, serde.headers())
    assert fallback.uid == 3 and fallback.message_id == "a@b" and fallback.subject is None
    assert fallback.parse_error is not None and "forced" in fallback.parse_error


async def test_folders_share_one_pool_concurrently() -> None:
    """The service hands one pool to every folder of every inbox: concurrent batches must
    come back whole and each to its own caller."""
    batch = _batch()
    pool = ParsePool(2)
    try:
        parts = await asyncio.gather(*(pool.encode(batch[i::4]) for i in range(4)))
    finally:
        pool.close()
    for i, part in enumerate(parts):
        assert [m.uid for m in part] == [f.uid for f in batch[i::4]]


async def test_start_brings_every_worker_up_before_the_first_batch() -> None:
    """``start`` spawns the forkserver and all workers (the service calls it while it sets up
    Kafka and IMAP); the event loop stays free meanwhile; a batch after it gives what inline
    gives."""
    pool = ParsePool(2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.create_task(ticker())
    batch = _batch()[:20]
    inline = await ParsePool(0).encode(batch, log_attachments=True, producer="p")
    try:
        starting = asyncio.create_task(pool.start())
        await asyncio.sleep(0)  # start() is under way: a batch now is encoded inline
        assert pool._starting
        early = await pool.encode(batch, log_attachments=True, producer="p")
        assert _decoded(early) == _decoded(inline)
        await starting
        assert not pool._starting
        during_start = ticks
        assert pool._executor is not None
        processes = list(pool._executor._processes.values())
        assert len(processes) == 2 and all(p.is_alive() for p in processes)
        pooled = await pool.encode(batch, log_attachments=True, producer="p")
        assert _decoded(pooled) == _decoded(inline)
    finally:
        beat.cancel()
        pool.close()
    assert during_start > 0  # the loop ran while the workers started
    await ParsePool(0).start()  # inline: nothing to start


async def test_workers_do_not_run_the_parents_main_module_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """multiprocessing re-runs the parent's ``__main__`` in every worker; under the console
    script that imports the whole CLI into each one. A main module that leaves a mark when it
    runs must leave none, and the parent's main module is its own again after the start."""
    mark = tmp_path / "main-ran"
    script = tmp_path / "heavy_main.py"
    script.write_text(f"open({str(mark)!r}, 'w').close()\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    pool = ParsePool(1)
    try:
        await pool.start()
        assert pool._executor is not None
        assert len(pool._executor._processes) == 1
        batch = _batch()[:5]
        assert len(await pool.encode(batch, log_attachments=True, producer="p")) == 5
    finally:
        pool.close()
    assert sys.modules["__main__"] is main
    assert not mark.exists()


def test_a_worker_maps_a_segment_made_again_under_an_old_name_afresh() -> None:
    """Segment names are random, but one unlinked and made again under the same name is
    another segment: the worker's cached mapping of the old one must not serve its bodies."""
    from multiprocessing import shared_memory

    from inboxstream.producers import parse_pool

    first = shared_memory.SharedMemory(create=True, size=4096)
    name = first.name
    try:
        assert first.buf is not None
        first.buf[:3] = b"old"
        assert parse_pool._mapping(name)[:3] == b"old"
        assert parse_pool._mapping(name)[:3] == b"old"  # cached
    finally:
        first.close()
        first.unlink()
    again = shared_memory.SharedMemory(name=name, create=True, size=4096)
    try:
        assert again.buf is not None
        again.buf[:3] = b"new"
        assert parse_pool._mapping(name)[:3] == b"new"
    finally:
        again.close()
        again.unlink()
        parse_pool._mapped.pop(name)[1].close()

"""The sink's Avro containers: pieces written where they lie, read back as one valid file."""

from __future__ import annotations

import io
import os
import tempfile

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.schemas.models import ThreadEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks import avro_insert
from inboxstream.sinks.avro_insert import Buffer, container, write_pieces


def _written(pieces: list[Buffer]) -> bytes:
    with tempfile.TemporaryFile() as f:
        n = write_pieces(f.fileno(), pieces)
        f.seek(0)
        data = f.read()
    assert n == len(data)
    return data


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=3000), st.integers(0, 3))
def test_pieces_land_in_order_past_the_kernels_iov_limit(chunks: list[bytes], cut: int) -> None:
    """More pieces than one writev takes (1,024 on Linux), memoryviews among them."""
    pieces: list[Buffer] = [memoryview(c)[cut:] if i % 2 else c for i, c in enumerate(chunks)]
    assert _written(pieces) == b"".join(pieces)


def test_a_short_write_is_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    """writev may write less than asked (a signal): the rest still lands, once, in order."""
    real = os.writev

    def short(fd: int, buffers: list[Buffer]) -> int:
        first = bytes(buffers[0])
        return real(fd, [first[: max(1, len(first) // 2)]])

    monkeypatch.setattr(avro_insert.os, "writev", short)
    pieces: list[Buffer] = [b"abcdef", memoryview(b"xyz123")[2:], b"", b"tail"] * 700
    assert _written(pieces) == b"".join(pieces)


def test_the_pieces_make_one_container_fastavro_reads() -> None:
    serde = serde_for(ThreadEvent)
    records = [
        {
            "event_id": f"t{i}",
            "event_type": "thread.assigned",
            "inbox_id": "owner@demo.example",
            "message_event_id": f"e{i}",
            "message_id": f"m{i}@x",
            "thread_id": f"th{i // 3}",
            "merged_thread_ids": [],
            "root_message_id": None,
            "base_subject": "Grüße",
            "algorithm": "rfc5256",
            "occurred_at": 1_700_000_000_000 + i,
        }
        for i in range(2500)
    ]
    # encoded and cut to the bare datum as the processor writes and the sink reads them
    datums: list[Buffer] = []
    for record in records:
        value = serde.encode_record(record)
        found = serde.writer_of(value, serde.headers("thread.assigned"))
        assert found is not None
        datums.append(memoryview(value)[found[1] :])
    got = list(fastavro.reader(io.BytesIO(_written(container(serde.writer, datums)))))
    assert [r["event_id"] for r in got] == [r["event_id"] for r in records]
    assert got[-1]["occurred_at"] == records[-1]["occurred_at"]

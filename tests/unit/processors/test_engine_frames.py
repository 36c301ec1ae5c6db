"""The engine process's framing (``processors.engine_process``): whole frames in order across
a real pipe whatever the sizes, the end of the stream mid-frame read as the end, a writer whose
reader is gone saying so, and the pipe widened."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.engine_process import (
    FrameWriter,
    _widen,
    read_frame,
    read_frames,
    write_frame,
)


def _collect(fd: int) -> tuple[threading.Thread, list[bytearray | None]]:
    got: list[bytearray | None] = []
    reader = threading.Thread(target=read_frames, args=(fd, got.append), daemon=True)
    reader.start()
    return reader, got


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=200_000) | st.sampled_from([b"", b"x" * 3_000_000])))
def test_frames_arrive_whole_and_in_order(frames: list[bytes]) -> None:
    r, w = os.pipe()
    reader, got = _collect(r)
    writer = FrameWriter(w, "test-writer")
    for frame in frames:
        writer.put(frame)
    writer.close()  # closes w once everything is written: the reader sees the end
    writer.join(10)
    reader.join(10)
    os.close(r)
    assert [bytes(f) for f in got[:-1]] == frames  # type: ignore[arg-type]
    assert got[-1] is None


def test_an_end_mid_frame_is_the_end() -> None:
    r, w = os.pipe()
    os.write(w, (100).to_bytes(8, "little") + b"only ten b")
    os.close(w)
    assert read_frame(r) is None
    os.close(r)


def test_an_end_between_frames_is_the_end() -> None:
    r, w = os.pipe()
    write_frame(w, b"one")
    os.close(w)
    assert read_frame(r) == b"one"
    assert read_frame(r) is None
    os.close(r)


def test_a_writer_whose_reader_is_gone_raises_on_the_next_put() -> None:
    r, w = os.pipe()
    os.close(r)
    writer = FrameWriter(w, "test-writer")
    writer.put(b"into nowhere")  # queued; the thread meets EPIPE (Python ignores SIGPIPE)
    deadline = time.monotonic() + 10
    while writer.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(BrokenPipeError):
        writer.put(b"more")
    writer.close()
    writer.join(10)


def test_the_pipe_is_widened() -> None:
    r, w = os.pipe()
    try:
        before = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
        _widen(r)
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == max(before, min(limit, 16 << 20))
    finally:
        os.close(r)
        os.close(w)

"""Our linear IMAP response reader against aioimaplib's own, on real-shaped FETCH responses."""

from __future__ import annotations

import asyncio
import random

from aioimaplib import aioimaplib
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.imap.connection import _Protocol
from inboxstream.imap.fetch import parse_fetch_lines
from inboxstream.imap.response import FastFetchCommand

TAG = "A0042"


def fetch_response(n: int, *, seed: int = 1) -> bytes:
    """n messages as Dovecot sends them for our backfill FETCH, literals with CRLFs and
    parentheses inside, some attributes after the literal, then the tagged OK."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        body = (
            f"Subject: msg {i} (part {rng.randint(1, 9)}\r\n\r\n"
            + "x)(" * rng.randint(0, 5)
            + "\r\n"
        ).encode()
        if i % 3 == 0:
            out.append(f"* {i} FETCH (UID {i} BODY[] {{{len(body)}}}\r\n".encode())
            out.append(body)
            out.append(b" FLAGS (\\Seen) RFC822.SIZE 10)\r\n")
        else:
            out.append(
                f'* {i} FETCH (UID {i} FLAGS () INTERNALDATE "22-Nov-2026 10:00:00 +0000" '
                f"RFC822.SIZE {len(body)} BODY[] {{{len(body)}}}\r\n".encode()
            )
            out.append(body)
            out.append(b")\r\n")
    out.append(f"{TAG} OK Fetch completed (0.001 + 0.000 secs).\r\n".encode())
    return b"".join(out)


async def feed(
    protocol: aioimaplib.IMAP4ClientProtocol, cmd: aioimaplib.Command, chunks: list[bytes]
) -> list[bytes]:
    protocol.state = aioimaplib.SELECTED
    protocol.pending_async_commands["FETCH"] = cmd
    for chunk in chunks:
        protocol.data_received(chunk)
    await asyncio.wait_for(cmd.wait(), 5)
    response = cmd.response
    assert response.result == "OK"
    return [bytes(line) for line in response.lines]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), cuts=st.lists(st.integers(0, 10_000), max_size=30))
async def test_same_lines_as_aioimaplib_for_any_chunking(n: int, cuts: list[int]) -> None:
    loop = asyncio.get_running_loop()
    data = fetch_response(n, seed=n)
    chunks = split(data, cuts)
    ours = await feed(
        _Protocol(loop, 143),
        FastFetchCommand(TAG, "1:*", "(BODY[])", prefix="UID", loop=loop),
        chunks,
    )
    theirs = await feed(
        aioimaplib.IMAP4ClientProtocol(loop),
        aioimaplib.FetchCommand(TAG, "1:*", "(BODY[])", prefix="UID", loop=loop),
        chunks,
    )
    assert ours == theirs
    items = parse_fetch_lines(ours)  # type: ignore[arg-type]
    assert [i.uid for i in items] == list(range(1, n + 1))
    assert all(i.raw and i.raw.startswith(b"Subject: msg ") for i in items)


async def test_big_fetch_in_one_read_has_no_recursion_limit() -> None:
    """aioimaplib recurses per line: 5,000 messages in one read exceed the default limit."""
    loop = asyncio.get_running_loop()
    n = 5_000
    data = fetch_response(n)
    lines = await feed(
        _Protocol(loop, 143),
        FastFetchCommand(TAG, "1:*", "(BODY[])", prefix="UID", loop=loop),
        [data],
    )
    assert len(parse_fetch_lines(lines)) == n  # type: ignore[arg-type]
    stock = aioimaplib.IMAP4ClientProtocol(loop)
    stock.state = aioimaplib.SELECTED
    stock.pending_async_commands["FETCH"] = aioimaplib.FetchCommand(
        TAG, "1:*", "(BODY[])", prefix="UID", loop=loop
    )
    try:
        stock.data_received(data)
        raised = False
    except RecursionError:
        raised = True
    assert raised, "aioimaplib no longer recurses per line: revisit imap/response.py"

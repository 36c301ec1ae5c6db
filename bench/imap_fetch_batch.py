"""Benchmark: UID FETCH throughput against batch size, stock aioimaplib vs our reader.

aioimaplib 2.0 reads a FETCH response in O(n^2) (it rescans the response so far at every
line) and recurses once per line of each read, so big batches slow down and then fail with
RecursionError. ``imap/response.py`` replaces that reader; this script measures both on
the same Dovecot folder (the backfill's FETCH items, BODY.PEEK[] included), fetching the same
messages with each batch size, and prints messages/s and the ratio ours/stock; then the same
for a flags-only FETCH, whose short lines are where the recursion limit is reached.

Run: ``.venv/bin/python -m bench.imap_fetch_batch [MESSAGES]`` (default 6,000).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time

from aioimaplib import aioimaplib

from bench.big_mailbox import filled_user
from inboxstream.imap.connection import ImapConnection, ImapEndpoint
from inboxstream.imap.fetch import parse_fetch_lines
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.producers.folder_sync import FETCH_ITEMS_CONDSTORE

BATCHES = (50, 100, 200, 500, 1_000, 2_000, 4_000)
#: What a flag resync fetches: short lines, so one read holds thousands of them.
FLAGS_ONLY = "(UID FLAGS MODSEQ)"
STOCK_TIMEOUT = 60.0


async def stock(
    user: str, password: str, n: int, batch: int, items: str = FETCH_ITEMS_CONDSTORE
) -> float | str:
    ep = dovecot.endpoints()
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    client = aioimaplib.IMAP4_SSL(ep.tls_hostname, ep.imaps_port, ssl_context=ctx, timeout=600)
    await client.wait_hello_from_server()
    await client.login(user, password)
    await client.select("INBOX")  # aioimaplib tracks SELECTED only via select()
    got = 0
    start = time.perf_counter()
    try:
        for lo in range(1, n + 1, batch):
            hi = min(n, lo + batch - 1)
            response = await asyncio.wait_for(
                client.uid("fetch", f"{lo}:{hi}", items), STOCK_TIMEOUT
            )
            got += len(parse_fetch_lines(response.lines))
    except RecursionError:
        return "RecursionError"
    except TimeoutError:
        # The RecursionError is raised inside data_received: asyncio logs it and drops the
        # connection's data, so the command never completes.
        return "hung"
    finally:
        client.protocol.transport.close()
    elapsed = time.perf_counter() - start
    assert got == n, (got, n)
    return n / elapsed


async def ours(
    user: str, password: str, n: int, batch: int, items: str = FETCH_ITEMS_CONDSTORE
) -> float:
    ep = dovecot.endpoints()
    conn = await ImapConnection.open(
        ImapEndpoint(ep.tls_hostname, ep.imaps_port, ca_file=ep.ca_cert), user, password
    )
    await conn.select("INBOX")
    got = 0
    start = time.perf_counter()
    try:
        for lo in range(1, n + 1, batch):
            hi = min(n, lo + batch - 1)
            response = await conn.uid_fetch(f"{lo}:{hi}", items)
            got += len(parse_fetch_lines(response.lines))
    finally:
        conn.abort()
    elapsed = time.perf_counter() - start
    assert got == n, (got, n)
    return n / elapsed


async def main(n: int) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    user, password, size = filled_user(n, "benchfetch")
    try:
        print(f"folder: {n} messages, {size / 1e6:.1f} MB")
        await ours(user, password, min(n, 500), 100)  # warm Dovecot's caches for both
        for items in (FETCH_ITEMS_CONDSTORE, FLAGS_ONLY):
            print(f"UID FETCH {items}")
            print(f"{'batch':>6} {'stock msg/s':>14} {'ours msg/s':>12} {'ours/stock':>11}")
            for batch in BATCHES:
                if batch > n:
                    break
                theirs = await stock(user, password, n, batch, items)
                mine = await ours(user, password, n, batch, items)
                ratio = f"{mine / theirs:10.1f}x" if isinstance(theirs, float) else "         -"
                shown = f"{theirs:14.0f}" if isinstance(theirs, float) else f"{theirs:>14}"
                print(f"{batch:>6} {shown} {mine:12.0f} {ratio}", flush=True)
    finally:
        dovecot.remove_user(user)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6_000))

"""Benchmark: backfill of one big folder into Kafka, against a plain imaplib UID FETCH loop.

Fills a Dovecot INBOX with N realistic messages (bench/big_mailbox.py), then, over the same
folder:

* baseline: stdlib ``imaplib`` fetching every message (the backfill's FETCH items, same batch
  size) and doing nothing with it: the floor any IMAP backfill pays; and the same loop plus
  ``email.message_from_bytes`` per message, to show how much of the gap is MIME parsing;
* ours: ``sync_folder`` (our connection and FETCH reader, MIME parsing, both events Avro-encoded
  and published to the real Kafka with acks=all, waiting for the acks batch by batch).

Prints messages/s for both, the ratio, and our process's RSS (psutil, sampled every 50 ms):
before the backfill, the peak during it, and the folder's size for scale.

Run: ``.venv/bin/python -m bench.backfill [N] [BATCH] [WORKERS,...]`` (default 20,000 messages,
batch BACKFILL_BATCH, parse workers 0 (inline) and 2; one backfill run per worker count). The
last line is one JSON object with the figures of the last worker count (the default setting,
2, comes last): messages, imaplib_msg_s, ours_msg_s, ratio, peak_rss_mb_total (this process's
peak plus the parse pool's, forkserver included) and peak_pss_mb_total (the same processes in
PSS: the pages the forked workers share with the forkserver counted once, not in each).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import json
import ssl
import sys
import threading
import time
import uuid

import psutil
from aiokafka.admin import AIOKafkaAdminClient

from bench import usage
from bench.big_mailbox import filled_user
from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.kafka import client_options, ensure_topics, make_producer
from inboxstream.core.settings import KafkaSettings, TopicSettings
from inboxstream.imap.connection import ImapConnection, ImapEndpoint
from inboxstream.imap.fetch import BACKFILL_BATCH, parse_fetch_lines
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.producers.folder_sync import FETCH_ITEMS_CONDSTORE, sync_folder
from inboxstream.producers.parse_pool import ParsePool
from inboxstream.producers.publish import EventPublisher

DEFAULT_BATCH = BACKFILL_BATCH


class PeakRss:
    """Samples this process's RSS in a thread, so a busy event loop cannot hide a peak; and,
    separately, the peak sum over its child processes (the parse workers and their
    forkserver).

    The sampler shares the two cores with what it measures, so it reads little: RSS every 50
    ms from the processes it knows, PSS (smaps) every 400 ms, and the process list itself (a
    scan of every process on the machine, with their command lines) once a second, which is
    how soon a replaced worker is seen. Scanning each round took a tenth of a core.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.children_peak = 0
        self.pss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _pool_processes(self) -> list[psutil.Process]:
        """The parse pool's processes only (the forkserver and the workers it forked): the
        services this benchmark may have started (Kafka, Dovecot) are children too."""
        return usage.tree(self.proc, usage.is_pool_process)[1:]

    def _run(self, interval: float) -> None:
        rounds = 0
        pool = self._pool_processes()
        while not self._stop.wait(interval):
            rounds += 1
            if rounds % 20 == 0:
                pool = self._pool_processes()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.children_peak = max(self.children_peak, usage.rss(pool))
            if rounds % 8 == 0:  # smaps is slower to read
                self.pss_peak = max(self.pss_peak, usage.pss([self.proc, *pool]))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def imaplib_loop(user: str, password: str, n: int, batch: int, *, parse: bool = False) -> float:
    ep = dovecot.endpoints()
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    client = imaplib.IMAP4_SSL(ep.tls_hostname, ep.imaps_port, ssl_context=ctx)
    client.login(user, password)
    client.select("INBOX", readonly=True)
    got = 0
    start = time.perf_counter()
    for lo in range(1, n + 1, batch):
        typ, data = client.uid("FETCH", f"{lo}:{lo + batch - 1}", FETCH_ITEMS_CONDSTORE)
        assert typ == "OK"
        for part in data:
            if isinstance(part, tuple):
                got += 1
                if parse:
                    email.message_from_bytes(part[1], policy=email.policy.compat32)
    elapsed = time.perf_counter() - start
    client.logout()
    assert got == n, (got, n)
    return n / elapsed


async def ours(
    user: str,
    password: str,
    n: int,
    batch: int,
    settings: KafkaSettings,
    topics: TopicSettings,
    workers: int = 0,
) -> tuple[float, int, int, int]:
    ep = dovecot.endpoints()
    tune_for_streaming()  # as the producer service does when it starts
    pool = ParsePool(workers)
    await pool.start()  # the workers start before the clock, as the service starts them
    producer = make_producer(settings)
    await producer.start()
    conn = await ImapConnection.open(
        ImapEndpoint(ep.tls_hostname, ep.imaps_port, ca_file=ep.ca_cert), user, password
    )
    before = psutil.Process().memory_info().rss
    try:
        with PeakRss() as rss:
            start = time.perf_counter()
            result = await sync_folder(
                conn,
                EventPublisher(producer, topics, pool),
                inbox_id=user,
                folder="INBOX",
                role="inbox",
                batch_size=batch,
            )
            await producer.flush()
            elapsed = time.perf_counter() - start
    finally:
        await conn.logout()
        await producer.stop()
        pool.close()
    assert result.published == n, (result.published, n)
    return n / elapsed, before, rss.peak, rss.children_peak, rss.pss_peak


async def warm(user: str, password: str, batch: int) -> None:
    """Read the folder once so both contenders find Dovecot's index and the files cached."""
    ep = dovecot.endpoints()
    conn = await ImapConnection.open(
        ImapEndpoint(ep.tls_hostname, ep.imaps_port, ca_file=ep.ca_cert), user, password
    )
    try:
        selected = await conn.select("INBOX")
        for lo in range(1, selected.uidnext, batch):
            response = await conn.uid_fetch(f"{lo}:{lo + batch - 1}", FETCH_ITEMS_CONDSTORE)
            parse_fetch_lines(response.lines)
    finally:
        await conn.logout()


async def main(n: int, batch: int, workers: list[int]) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers())
    topics = TopicSettings().with_prefix(f"benchbackfill{uuid.uuid4().hex[:8]}.")
    specs = [topics.messages, topics.bodies, topics.status]
    await ensure_topics(settings, topics, specs)
    start = time.perf_counter()
    user, password, size = filled_user(n, "benchbackfill")
    filled = time.perf_counter() - start
    print(f"folder: {n} messages, {size / 1e6:.1f} MB, filled in {filled:.0f} s")
    print(f"batch: {batch} messages per UID FETCH; items {FETCH_ITEMS_CONDSTORE}")
    try:
        await warm(user, password, batch)
        base = await asyncio.to_thread(imaplib_loop, user, password, n, batch)
        print(f"imaplib UID FETCH loop (fetch only):       {base:9.0f} msg/s", flush=True)
        parsed = await asyncio.to_thread(imaplib_loop, user, password, n, batch, parse=True)
        print(f"imaplib loop + stdlib MIME parse only:     {parsed:9.0f} msg/s", flush=True)
        figures: dict[str, float] = {}
        for w in workers:
            # A fresh topic pair per run, so each contender writes to empty partitions.
            run_topics = TopicSettings().with_prefix(f"{topics.messages.name}.w{w}.")
            run_specs = [run_topics.messages, run_topics.bodies, run_topics.status]
            await ensure_topics(settings, run_topics, run_specs)
            specs += run_specs
            rate, before, peak, workers_peak, pss_peak = await ours(
                user, password, n, batch, settings, run_topics, w
            )
            how = "inline" if w == 0 else f"{w} parse workers"
            print(f"inboxstream backfill, {how + ':':18} {rate:9.0f} msg/s", flush=True)
            print(f"  ratio inboxstream / imaplib:           {rate / base:9.2f}")
            print(
                f"  RSS of this process: {before / 1e6:.0f} MB before, peak {peak / 1e6:.0f} MB "
                f"(growth {(peak - before) / 1e6:.0f} MB for a {size / 1e6:.0f} MB folder); "
                f"parse workers + forkserver: peak {workers_peak / 1e6:.0f} MB together; "
                f"all of them in PSS (shared pages counted once): peak {pss_peak / 1e6:.0f} MB",
                flush=True,
            )
            figures = {
                "messages": n,
                "imaplib_msg_s": round(base),
                "ours_msg_s": round(rate),
                "ratio": round(rate / base, 3),
                "peak_rss_mb_total": round((peak + workers_peak) / 1e6),
                "peak_pss_mb_total": round(pss_peak / 1e6),
            }
        print(
            f"backfill target: >= 8,000 msg/s, ratio >= 0.35, under 15 s for 100,000 "
            f"messages, producer + workers under 300 MB; this run (last worker count): "
            f"{figures['ours_msg_s']:.0f} msg/s, {n / figures['ours_msg_s']:.1f} s"
        )
        print(json.dumps(figures))
    finally:
        dovecot.remove_user(user)
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            await admin.delete_topics([s.name for s in specs])
        finally:
            await admin.close()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch_arg = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_BATCH
    workers_arg = [int(w) for w in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0, 2]
    asyncio.run(main(count, batch_arg, workers_arg))

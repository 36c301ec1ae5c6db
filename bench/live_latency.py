"""Benchmark: live latency, APPEND -> ``message.new`` event in Kafka, through the producer
service (IDLE on INBOX, keepalive, checkpoint per change) against the local Dovecot + Kafka.

Baseline, measured in the same run for the same APPENDs: a bare IDLE client (stdlib ssl
socket, no library) timing APPEND -> ``* n EXISTS``. Dovecot itself delays IDLE notices by
about half a second (it batches mailbox changes), so that baseline is the floor no client can
beat; the ratio is what the service adds on top (DONE, EXAMINE, UID FETCH, parse, Kafka ack).

Run: ``.venv/bin/python -m bench.live_latency [N]`` (default 50 appends; starts the services
if needed). The machine is shared, so compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from inboxstream.app.demo import demo_inbox, imap_client
from inboxstream.core.kafka import client_options, ensure_topics
from inboxstream.core.settings import KafkaSettings, ProducerSettings, TopicSettings, load_settings
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.producers.registry import InboxRegistry
from inboxstream.producers.service import ProducerService
from inboxstream.schemas.models import MessageEvent, StatusEvent
from inboxstream.schemas.serde import serde_for


def _fmt(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms"


class RawIdleWatcher(threading.Thread):
    """A minimal IDLE client: puts the arrival time of every ``EXISTS`` on a queue."""

    def __init__(self, user: str, password: str) -> None:
        super().__init__(daemon=True)
        ep = dovecot.endpoints()
        ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
        raw = socket.create_connection((ep.tls_hostname, ep.imaps_port), timeout=30)
        self.sock = ctx.wrap_socket(raw, server_hostname=ep.tls_hostname)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self._command(f'a1 LOGIN "{user}" "{password}"', b"a1 ")
        self._command("a2 SELECT INBOX", b"a2 ")
        self.arrivals: queue.Queue[float] = queue.Queue()
        self.stop = threading.Event()

    def _command(self, line: str, tag: bytes) -> None:
        self.sock.sendall(line.encode() + b"\r\n")
        while not (reply := self.file.readline()).startswith(tag):
            if not reply:
                raise ConnectionError("server closed the connection")
        if b" OK" not in reply:
            raise RuntimeError(f"{line.split()[1]} failed: {reply!r}")

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self.sock.sendall(f"i{n} IDLE\r\n".encode())
            while not self.file.readline().startswith(b"+"):
                pass
            while True:
                line = self.file.readline()
                if line.endswith(b"EXISTS\r\n"):
                    self.arrivals.put(time.monotonic())
                    break
                if not line:
                    return
            self.sock.sendall(b"DONE\r\n")
            while not self.file.readline().startswith(f"i{n} ".encode()):
                pass


def append(user: str, password: str, raw: bytes) -> float:
    """APPEND on a connection opened beforehand; returns the time the command was sent."""
    client = imap_client(user, password)
    try:
        t0 = time.monotonic()
        typ, data = client.append("INBOX", None, None, raw)
        if typ != "OK":
            raise RuntimeError(f"APPEND failed: {data!r}")
        return t0
    finally:
        client.logout()


async def main(n: int) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    user = f"bench-live-{secrets.token_hex(4)}@inboxstream.test"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(user, password)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
            topics=TopicSettings().with_prefix(prefix),
            producer=ProducerSettings(registry_dir=Path(tmp), registry_poll_s=0.5),
        )
        await ensure_topics(settings.kafka, settings.topics)
        InboxRegistry(settings.producer.registry_dir).add(demo_inbox(password, user))
        consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None)
        await consumer.start()
        tps = [
            TopicPartition(t, p)
            for t in (settings.topics.messages.name, settings.topics.status.name)
            for p in range(settings.topics.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        service = ProducerService(settings, InboxRegistry(settings.producer.registry_dir))
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        watcher = RawIdleWatcher(user, password)
        watcher.start()
        seen: dict[str, float] = {}
        idle = False

        async def drain(timeout_ms: int = 50) -> None:
            nonlocal idle
            for tp, records in (await consumer.getmany(timeout_ms=timeout_ms)).items():
                for record in records:
                    if tp.topic == settings.topics.status.name:
                        status = serde_for(StatusEvent).decode(record.value, record.headers)
                        idle |= status.state == "idle" and status.folder == "INBOX"
                    else:
                        event = serde_for(MessageEvent).decode(record.value, record.headers)
                        seen.setdefault(event.message_id, time.monotonic())

        try:
            while not idle:
                await drain(200)
            service_lat: list[float] = []
            floor_lat: list[float] = []
            for i in range(n):
                mid = f"live-{i}-{uuid.uuid4().hex[:6]}@bench.test"
                raw = (
                    f"From: a@bench.test\r\nTo: {user}\r\nSubject: live {i}\r\n"
                    f"Message-ID: <{mid}>\r\n\r\nhello {i}\r\n"
                ).encode()
                t0 = await asyncio.to_thread(append, user, password, raw)
                while mid not in seen:
                    await drain()
                service_lat.append(seen[mid] - t0)
                floor_lat.append(await asyncio.to_thread(watcher.arrivals.get, True, 30) - t0)
                await asyncio.sleep(0.05)
        finally:
            watcher.stop.set()
            with contextlib.suppress(OSError):
                watcher.sock.close()
            stop.set()
            await task
            await consumer.stop()
            dovecot.remove_user(user)
    print(f"live latency over {n} APPENDs to INBOX (sequential), one machine, same run:")
    print(f"  baseline  bare IDLE client, APPEND -> * EXISTS : {_fmt(floor_lat)}")
    print(f"  inboxstream service, APPEND -> event in Kafka   : {_fmt(service_lat)}")
    ratio50 = statistics.median(service_lat) / statistics.median(floor_lat)
    print(f"  ratio service/baseline (p50): {ratio50:.2f}x")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))

"""Hundreds or thousands of inboxes in one asyncio process: a cold start, then live mail to
every one of them.

    .venv/bin/python -m bench.many_inboxes [INBOXES] [MESSAGES_PER_INBOX]

Creates INBOXES Dovecot users (default 300) with MESSAGES_PER_INBOX messages each in INBOX
(default 20), registers them all with one ProducerService, and measures, on the real Dovecot
and Kafka:

- backfill: messages/s until every inbox's INBOX is in Kafka, against the same service with one
  inbox of INBOXES x MESSAGES_PER_INBOX messages (the baseline, measured in the same run);
- cold start: seconds from the service's start until every inbox's INBOX and sent folder are
  backfilled and idling (their ``idle`` status events), with set-ups through the connect gate;
- connections: the most IMAP connections any inbox held and the total (``doveadm who``), which
  the budget caps at 5 per inbox (at most 3 here: INBOX, sent, a round of the other folders);
- live: one message delivered over LMTP to every inbox while all of them IDLE, and the delay
  from delivery to its event in Kafka, p50/p95 (Dovecot delays IDLE notices by ~0.5 s);
- memory: the process's RSS (with its parse workers) sampled every second, the peak;
- Dovecot: its processes' count, CPU seconds and RSS at the end of the cold start.

The last line is one JSON object: ``{"inboxes", "all_idle_s", "peak_rss_mb",
"max_connections_per_inbox", "live_p50_ms", "live_p95_ms"}``.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import statistics
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import usage
from inboxstream.app.demo import demo_inbox
from inboxstream.core.kafka import client_options, ensure_topics
from inboxstream.core.settings import KafkaSettings, ProducerSettings, Settings, TopicSettings
from inboxstream.imap.budget import BudgetRegistry
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.producers.registry import InboxRegistry
from inboxstream.producers.service import ProducerService
from inboxstream.schemas.models import MessageEvent, StatusEvent
from inboxstream.schemas.serde import serde_for


def _mail(user: str, i: int, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Load <load@example.com>"
    msg["To"] = user
    msg["Subject"] = f"{tag} {i}"
    msg["Message-ID"] = f"<{tag}-{i}-{user}>"
    msg.set_content(f"message {i} for {user}\n" + "lorem ipsum " * 30)
    return bytes(msg)


class Counter:
    """Counts message.new events per inbox from the start of the topic; notes arrival times."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serde = serde_for(MessageEvent)
        self.per_inbox: dict[str, int] = {}
        self.arrived: dict[str, float] = {}  # Message-ID -> monotonic time it was read
        self.total = 0
        self.consumer = AIOKafkaConsumer(
            **client_options(settings.kafka), group_id=None, auto_offset_reset="earliest"
        )

    async def start(self) -> None:
        await self.consumer.start()
        topic = self.settings.topics.messages.name
        tps = [TopicPartition(topic, p) for p in range(self.settings.topics.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def until(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.total < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.total} of {total} messages after {timeout}s")
            batches = await self.consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    event = self.serde.decode(record.value, record.headers)
                    if event.event_type != "message.new":
                        continue
                    self.total += 1
                    self.per_inbox[event.inbox_id] = self.per_inbox.get(event.inbox_id, 0) + 1
                    self.arrived[event.message_id] = now


class IdleWatch:
    """Reads inbox.status; notes when each inbox has both its INBOX and sent folder idle."""

    def __init__(self, settings: Settings) -> None:
        self.serde = serde_for(StatusEvent)
        self.topic = settings.topics.status.name
        self.partitions = settings.topics.partitions
        self.idle: dict[str, set[str]] = {}
        self.all_idle_at: dict[str, float] = {}
        self.consumer = AIOKafkaConsumer(
            **client_options(settings.kafka), group_id=None, auto_offset_reset="earliest"
        )

    async def start(self) -> None:
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    event = self.serde.decode(record.value, record.headers)
                    if event.state == "idle" and event.folder in ("INBOX", "Sent"):
                        folders = self.idle.setdefault(event.inbox_id, set())
                        folders.add(event.folder)
                        if len(folders) == 2:
                            self.all_idle_at.setdefault(event.inbox_id, now)


def connections(prefix: str) -> tuple[int, int]:
    """(total, most for one user) IMAP connections of our users, from doveadm who."""
    per_user: dict[str, int] = {}
    for line in dovecot.doveadm("who", "-1").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith(prefix) and fields[1] == "imap":
            per_user[fields[0]] = per_user.get(fields[0], 0) + 1
    return sum(per_user.values()), max(per_user.values(), default=0)


def rss_with_children(proc: psutil.Process) -> int:
    """The producer's memory with its parse workers' (Python children only: Kafka and Dovecot
    are children too when this run started them). PSS, so pages the forked workers share
    with each other are counted once, not once per process."""
    return usage.pss(usage.tree(proc, lambda child: "python" in child.name()))


def dovecot_usage() -> tuple[int, float, int]:
    """(processes, CPU seconds, RSS bytes) of every Dovecot process."""
    count, cpu, rss = 0, 0.0, 0
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name in (
            "dovecot",
            "imap",
            "imap-login",
            "auth",
            "anvil",
            "log",
            "config",
            "stats",
            "indexer",
            "lmtp",
            "dict",
        ) or name.startswith("dovecot"):
            try:
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
                count += 1
            except psutil.Error:
                pass
    return count, cpu, rss


async def run_service(
    settings: Settings, users: list[str], password: str, expected: int, prefix: str
) -> tuple[
    float, float, int, int, ProducerService, asyncio.Event, asyncio.Task[None], Counter, int
]:
    """Start the service on ``users``; return when every message is in Kafka and every inbox
    idles: (seconds to the last message, seconds to all idle, peak connections in all, most
    for one inbox, the service, its stop event and task, the message counter, peak RSS)."""
    registry = InboxRegistry(settings.producer.registry_dir)
    for user in users:
        registry.add(demo_inbox(password, user))
    counter = Counter(settings)
    await counter.start()
    watch = IdleWatch(settings)
    await watch.start()
    watching = asyncio.create_task(watch.run())
    service = ProducerService(settings, registry, BudgetRegistry())
    stop = asyncio.Event()
    proc = psutil.Process()
    peak_rss = rss_with_children(proc)
    t0 = time.monotonic()
    task = asyncio.create_task(service.run(stop))
    peak_total = peak_one = 0
    waiting = asyncio.create_task(counter.until(expected, timeout=900))
    last_report = t0
    while not waiting.done() or len(watch.all_idle_at) < len(users):
        if task.done():
            task.result()  # the service died: say why
        total, one = await asyncio.to_thread(connections, prefix)
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        peak_rss = max(peak_rss, rss_with_children(proc))
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(
                f"  {last_report - t0:5.0f}s: {counter.total} messages, "
                f"{len(watch.all_idle_at)} of {len(users)} inboxes idle, {total} connections",
                file=sys.stderr,
            )
        if time.monotonic() - t0 > 900:
            raise TimeoutError(f"{len(watch.all_idle_at)} of {len(users)} inboxes idle in 900 s")
        await asyncio.wait({waiting}, timeout=1.0)
    waiting.result()
    watching.cancel()
    await watch.consumer.stop()
    all_idle = max(watch.all_idle_at.values()) - t0
    messages_s = max(counter.arrived.values(), default=t0) - t0
    return (messages_s, all_idle, peak_total, peak_one, service, stop, task, counter, peak_rss)


async def main(n_inboxes: int, per_inbox: int) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    proc = psutil.Process()
    tag = uuid.uuid4().hex[:8]
    prefix = f"load{tag}-"
    password = "load-" + tag
    users = [f"{prefix}{i:04d}@inboxstream.test" for i in range(n_inboxes)]
    baseline_user = f"{prefix}base@inboxstream.test"
    tmp = Path(tempfile.mkdtemp(prefix="many-inboxes-"))

    def settings_for(name: str) -> Settings:
        return Settings(
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
            topics=TopicSettings().with_prefix(f"bench-{tag}-{name}."),
            producer=ProducerSettings(registry_dir=tmp / name, registry_poll_s=0.5),
        )

    t = time.monotonic()
    for i, user in enumerate(users):
        dovecot.add_user(user, password)
        dovecot.fill_maildir(user, (_mail(user, j, "old") for j in range(per_inbox)))
        if i % 50 == 49:
            print(f"  created {i + 1} mailboxes", file=sys.stderr)
    dovecot.add_user(baseline_user, password)
    dovecot.fill_maildir(
        baseline_user, (_mail(baseline_user, j, "old") for j in range(n_inboxes * per_inbox))
    )
    print(f"{n_inboxes} inboxes x {per_inbox} messages created in {time.monotonic() - t:.0f}s")
    expected = n_inboxes * per_inbox
    try:
        base = settings_for("base")
        await ensure_topics(base.kafka, base.topics)
        b_s, _, _, _, service, stop, task, counter, _ = await run_service(
            base, [baseline_user], password, expected, f"{prefix}base"
        )
        stop.set()
        await asyncio.wait_for(task, 120)
        await counter.consumer.stop()

        many = settings_for("many")
        await ensure_topics(many.kafka, many.topics)
        rss0 = proc.memory_info().rss
        cpu0 = dovecot_usage()[1]
        (
            m_s,
            idle_s,
            peak_total,
            peak_one,
            service,
            stop,
            task,
            counter,
            peak_rss,
        ) = await run_service(many, users, password, expected, prefix)
        dc_count, dc_cpu, dc_rss = dovecot_usage()
        assert all(counter.per_inbox.get(u) == per_inbox for u in users), "an inbox is short"
        # Live: every inbox is IDLE now; deliver one message to each and time its event.
        await asyncio.sleep(3)
        sent_at: dict[str, float] = {}
        ep = dovecot.endpoints()

        def deliver() -> None:
            # In a thread: smtplib blocks, and the service shares this event loop.
            with smtplib.LMTP(ep.host, ep.lmtp_port, timeout=60) as lmtp:
                for user in users:
                    raw = _mail(user, 0, "live")
                    sent_at[f"live-0-{user}"] = time.monotonic()
                    lmtp.sendmail("load@example.com", [user], raw)

        t_live = time.monotonic()
        await asyncio.to_thread(deliver)
        deliver_s = time.monotonic() - t_live
        await counter.until(expected + n_inboxes, timeout=300)
        delays = sorted(counter.arrived[mid] - t0 for mid, t0 in sent_at.items())
        rss1 = proc.memory_info().rss
        stop.set()
        await asyncio.wait_for(task, 300)
        await counter.consumer.stop()
    finally:
        for user in [*users, baseline_user]:
            dovecot.remove_user(user)

    p50 = statistics.median(delays)
    p95 = delays[int(0.95 * (len(delays) - 1))]
    print(f"backfill, one inbox of {expected} messages (baseline): {expected / b_s:8.0f} msg/s")
    print(
        f"backfill, {n_inboxes} inboxes x {per_inbox} messages:    "
        f"{expected / m_s:8.0f} msg/s  ({m_s:.1f}s to the last message)"
    )
    print(f"ratio many inboxes / one inbox: {b_s / m_s:.2f}")
    print(
        f"cold start: every inbox backfilled and idling (INBOX and Sent) {idle_s:.1f}s after "
        f"the start (target: 120 s for 1,000 inboxes)"
    )
    print(
        f"IMAP connections: peak {peak_total} in all, at most {peak_one} for one inbox (budget: 5)"
    )
    print(
        f"live, one delivery to each of {n_inboxes} idling inboxes -> event in Kafka: "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
        f"(Dovecot's IDLE notice delay ~500 ms is the floor; LMTP took {deliver_s:.1f}s for all)"
    )
    print(
        f"RSS: {rss0 / 2**20:.0f} MB before, peak {peak_rss / 2**20:.0f} MB (PSS) with parse "
        "workers, "
        f"{rss1 / 2**20:.0f} MB with {n_inboxes} inboxes live "
        f"({(rss1 - rss0) / n_inboxes / 1024:.0f} KB per inbox)"
    )
    print(
        f"Dovecot after the cold start: {dc_count} processes, {dc_rss / 2**20:.0f} MB RSS, "
        f"{dc_cpu - cpu0:.0f} CPU-s during it"
    )
    print(
        json.dumps(
            {
                "inboxes": n_inboxes,
                "all_idle_s": round(idle_s, 1),
                "peak_rss_mb": round(peak_rss / 2**20),
                "max_connections_per_inbox": peak_one,
                "live_p50_ms": round(p50 * 1000),
                "live_p95_ms": round(p95 * 1000),
            }
        )
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [300, 20][len(args) :])))

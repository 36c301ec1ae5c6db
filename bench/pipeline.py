"""Benchmark: end to end, a Dovecot folder → Kafka → processor → ClickHouse rows.

Fills a Dovecot INBOX with N realistic messages (bench/big_mailbox.py), then runs the three
stages as separate processes at the same time, as a deployment would:

* ``inboxstream producer run``: backfills the folder into ``inbox.messages`` / ``inbox.bodies``;
* ``inboxstream process``: threads every message, exactly once, into ``inbox.threads``;
* ``inboxstream sink run``: projects messages and threads into ``email_metadata``/``threads``.

Progress is read from Kafka while they run (nothing here touches the stages): the producer's by
the end offsets of ``inbox.messages``, the processor's and the sink's by their consumer groups'
committed offsets. The run is over when the sink has committed past every message and every
thread assignment. Then the stages are stopped (SIGINT, as Ctrl-C) and the tables are counted
in the embedded engine the sink used: every message a row of ``email_metadata``, every thread
event a row of ``threads``.

Each stage's own rate is its records over the time from its first progress to its last (the
sink's: the message rows; its thread rows wait on the processor), so a stage that kept up with
the one before it shows about the same rate; the slowest stage bounded the run. The last line
is one JSON object: ``{"messages", "end_to_end_msg_s", "slowest_stage", ...}``.

Run: ``.venv/bin/python -m bench.pipeline [N]`` (default 100,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import usage
from bench.big_mailbox import filled_user
from inboxstream.app.demo import demo_inbox
from inboxstream.core.kafka import client_options, ensure_topics
from inboxstream.core.settings import (
    ClickHouseSettings,
    KafkaSettings,
    ProducerSettings,
    Settings,
    SinkSettings,
    TopicSettings,
)
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.producers.registry import InboxRegistry
from inboxstream.sinks.clickhouse import EmbeddedClickHouse

CLI = str(Path(sys.executable).with_name("inboxstream"))
PROCESSOR_GROUP = "bench-processor"
POLL_S = 0.25


@dataclass
class Stage:
    name: str
    records: int = 0
    first_at: float | None = None
    done_at: float | None = None

    def seen(self, count: int, now: float, target: int) -> None:
        self.records = count
        if count and self.first_at is None:
            self.first_at = now
        if count >= target and self.done_at is None:
            self.done_at = now

    def rate(self) -> float:
        if self.first_at is None or self.done_at is None:
            return 0.0
        return self.records / max(self.done_at - self.first_at, POLL_S)


@dataclass
class Progress:
    producer: Stage = field(default_factory=lambda: Stage("producer"))
    processor: Stage = field(default_factory=lambda: Stage("processor"))
    sink: Stage = field(default_factory=lambda: Stage("sink"))
    #: when the sink had also committed past every thread event (the run's end)
    threads_done_at: float | None = None


#: Extra ``process`` options for an experiment (e.g. ``--transaction-ms 500``); the
#: producer's parse workers come from BENCH_PARSE_WORKERS (default 2, the setting's default).
PROCESS_ARGS = os.environ.get("BENCH_PROCESS_ARGS", "").split()


def settings_for(tag: str, workdir: Path) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
        topics=TopicSettings().with_prefix(f"benchpipe{tag}."),
        clickhouse=ClickHouseSettings(path=workdir / "chdb", database=f"benchpipe_{tag}"),
        sink=SinkSettings(group_id=f"bench-sink-{tag}"),
        producer=ProducerSettings(
            registry_dir=workdir / "inboxes",
            parse_workers=int(os.environ.get("BENCH_PARSE_WORKERS", "2")),
        ),
    )


def stage_env(settings: Settings) -> dict[str, str]:
    """What each stage process reads: these settings as ``INBOXSTREAM_*`` JSON sections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXSTREAM_")}
    for section in ("kafka", "topics", "producer", "clickhouse", "sink", "metrics"):
        env[f"INBOXSTREAM_{section.upper()}"] = getattr(settings, section).model_dump_json()
    env["INBOXSTREAM_LOG_LEVEL"] = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CLI, *args], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:  # the group does not exist yet
        return 0
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)


async def end_offsets(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> int:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = await consumer.end_offsets(tps)
    return sum(ends.values())


async def watch(
    settings: Settings, n: int, t0: float, procs: list[subprocess.Popen[bytes]], timeout: float
) -> Progress:
    """Poll the offsets until the sink has committed past every message and thread event."""
    topics = settings.topics
    threads = ProcessorTopics.build(topics).threads
    progress = Progress()
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None)
    await admin.start()
    await consumer.start()
    last_print = 0.0
    try:
        while True:
            now = time.perf_counter() - t0
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a stage exited early ({proc.returncode}): {proc.args!r}")
            messages_end = await end_offsets(consumer, topics.messages.name, topics.partitions)
            threads_end = await end_offsets(consumer, threads, topics.partitions)
            progress.producer.seen(messages_end, now, n)
            produced = progress.producer.done_at is not None
            proc_at = await committed(admin, PROCESSOR_GROUP, topics.messages.name)
            progress.processor.seen(proc_at, now, messages_end if produced else n + 1)
            sink_messages = await committed(admin, settings.sink.group_id, topics.messages.name)
            sink_threads = await committed(admin, settings.sink.group_id, threads)
            # The sink's own stage is the message rows; the thread rows follow the processor.
            progress.sink.seen(sink_messages, now, messages_end if produced else n + 1)
            processed = progress.processor.done_at is not None
            if processed and sink_threads >= threads_end and progress.sink.done_at is not None:
                progress.threads_done_at = progress.threads_done_at or now
            if now - last_print >= 2:
                last_print = now
                print(
                    f"  {now:6.1f} s  produced {messages_end:7d}  processed {proc_at:7d}  "
                    f"sunk {sink_messages:7d} messages, {sink_threads:7d}/{threads_end} "
                    "thread records",
                    flush=True,
                )
            if progress.threads_done_at is not None:
                return progress
            if now > timeout:
                raise TimeoutError(f"not done after {timeout:.0f} s: {progress}")
            await asyncio.sleep(POLL_S)
    finally:
        await consumer.stop()
        await admin.close()


def box_busy_seconds(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """CPU seconds the whole box spent busy (not idle or waiting on I/O) between two samples
    of ``psutil.cpu_times()``, and of those, how many the hypervisor took (steal: a noisy
    neighbour, the run-to-run spread of these figures on a shared VM)."""
    fields = psutil.cpu_times()._fields
    delta = {f: a - b for f, a, b in zip(fields, after, before, strict=True)}
    busy = sum(v for f, v in delta.items() if f not in ("idle", "iowait", "guest", "guest_nice"))
    return busy, delta.get("steal", 0.0)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def main(n: int) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    settings = settings_for(tag, workdir)
    await ensure_topics(settings.kafka, settings.topics)
    await ensure_topics(
        settings.kafka, settings.topics, ProcessorTopics.build(settings.topics).specs
    )
    filled = time.perf_counter()
    user, password, size = filled_user(n, "benchpipe")
    print(
        f"folder: {n} messages, {size / 1e6:.1f} MB, filled in {time.perf_counter() - filled:.0f} s"
    )
    InboxRegistry(settings.producer.registry_dir).add(demo_inbox(password, user))
    env = stage_env(settings)
    logs = {name: workdir / f"{name}.log" for name in ("producer", "processor", "sink")}
    try:
        box_before = tuple(psutil.cpu_times())
        t0 = time.perf_counter()
        procs = [
            start(["sink", "run"], env, logs["sink"]),
            start(
                ["process", "--group-id", PROCESSOR_GROUP, *PROCESS_ARGS], env, logs["processor"]
            ),
            start(["producer", "run", "--no-progress"], env, logs["producer"]),
        ]
        try:
            progress = await watch(settings, n, t0, procs, timeout=max(300.0, n / 200))
            # CPU per message: each stage's own (with its children) and the box's, of which
            # the rest is Kafka, the registry, Dovecot and this watcher.
            box_cpu, stolen = box_busy_seconds(box_before, tuple(psutil.cpu_times()))
            stage_cpu = {
                name: usage.cpu_seconds(usage.tree(psutil.Process(proc.pid)))
                for name, proc in zip(("sink", "processor", "producer"), procs, strict=True)
            }
        finally:
            stop(procs)
        elapsed = progress.threads_done_at or 0.0
        ch = EmbeddedClickHouse.open(settings.clickhouse.path, settings.clickhouse.database)
        db = settings.clickhouse.database
        rows = ch.query(f"SELECT count() AS n FROM {db}.email_metadata FINAL")[0]["n"]
        thread_rows = ch.query(f"SELECT count() AS n FROM {db}.threads FINAL")[0]["n"]
        ch.close()
    finally:
        dovecot.remove_user(user)
        for name, log in logs.items():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            if tail:
                print(f"  {name} log tail: {' | '.join(tail)[:300]}")
    if int(rows) != n:
        raise SystemExit(f"email_metadata holds {rows} rows, expected {n}")
    if int(thread_rows) < n:
        raise SystemExit(f"threads holds {thread_rows} rows, fewer than the {n} messages")
    stages = [progress.producer, progress.processor, progress.sink]
    slowest = min(stages, key=Stage.rate)
    print(f"messages: {n}; {int(thread_rows)} thread rows; every message a row")
    for stage in stages:
        print(
            f"  {stage.name:9} {stage.rate():9,.0f} records/s own rate "
            f"({stage.first_at or 0:5.1f} s → {stage.done_at or 0:5.1f} s)"
        )
    rate = n / elapsed
    cpu_us = {name: round(sec / n * 1e6) for name, sec in stage_cpu.items()}
    others = box_cpu - sum(stage_cpu.values())
    print(
        "CPU per message: "
        + ", ".join(f"{name} {us} µs" for name, us in cpu_us.items())
        + f", the rest of the box {others / n * 1e6:.0f} µs; the box was busy "
        f"{box_cpu / (psutil.cpu_count() * elapsed):.0%} of {psutil.cpu_count()} cores "
        f"(stolen by the hypervisor: {stolen / (psutil.cpu_count() * elapsed):.0%})"
    )
    print(
        f"end to end: {rate:,.0f} msg/s ({elapsed:.1f} s from start to the last row); "
        f"slowest stage: {slowest.name}; target >= 3,000 msg/s"
    )
    print(
        json.dumps(
            {
                "messages": n,
                "end_to_end_msg_s": round(rate),
                "slowest_stage": slowest.name,
                **{f"{s.name}_msg_s": round(s.rate()) for s in stages},
                **{f"{name}_cpu_us_per_msg": us for name, us in cpu_us.items()},
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))

"""Helpers for the producer-service tests: run the service in-process, read topics back.

Plain functions and context managers (not fixtures) so each test module states what it uses.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from inboxstream.core.kafka import client_options
from inboxstream.core.settings import ProducerSettings, Settings
from inboxstream.imap.budget import BudgetRegistry
from inboxstream.imap.gate import ConnectGate
from inboxstream.producers.registry import InboxRegistry
from inboxstream.producers.service import ProducerService
from inboxstream.schemas.models import CheckpointEvent, Event, MessageEvent, StatusEvent
from inboxstream.schemas.serde import serde_for

E = TypeVar("E", bound=Event)


def fast_settings(settings: Settings, registry_dir: Path, **overrides: Any) -> Settings:
    """Short timers so the tests take seconds; same code paths as production."""
    values: dict[str, Any] = {
        "registry_dir": registry_dir,
        "registry_poll_s": 0.3,
        "batch_size": 100,
        "keepalive_s": 20.0,
        "read_timeout_s": 5.0,
        "poll_interval_s": 0.5,
        "other_folders_interval_s": 0.5,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
    }
    producer = ProducerSettings(**(values | overrides))
    return settings.model_copy(update={"producer": producer})


class TopicReader:
    """Reads one topic from the beginning, keeping everything decoded so far."""

    def __init__(self, settings: Settings, topic: str, model: type[E]) -> None:
        self.settings = settings
        self.topic = topic
        self.serde = serde_for(model)
        self.events: list[Any] = []
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **client_options(self.settings.kafka),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            tps = [TopicPartition(self.topic, p) for p in range(self.settings.topics.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._consumer = consumer
        return self._consumer

    async def poll(self) -> list[Any]:
        consumer = await self._open()
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                self.records += 1
                if record.value is not None:
                    self.events.append(self.serde.decode(record.value, record.headers))
        return self.events

    async def read_to_end(self) -> list[Any]:
        """Everything published up to now (not just the next fetch)."""
        consumer = await self._open()
        tps = list(consumer.assignment())
        end = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            await self.poll()
        return self.events

    async def wait_for(
        self, predicate: Callable[[list[Any]], bool], timeout: float = 30.0, what: str = ""
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = await self.poll()
            if predicate(events):
                return events
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what or predicate}; "
            f"got {len(self.events)} events, last: {self.events[-3:]!r}"
        )

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


@asynccontextmanager
async def running_service(
    settings: Settings, budgets: BudgetRegistry | None = None, gate: ConnectGate | None = None
) -> AsyncIterator[ProducerService]:
    """The service with its registry at ``settings.producer.registry_dir``, stopped after."""
    service = ProducerService(
        settings,
        InboxRegistry(settings.producer.registry_dir),
        budgets or BudgetRegistry(),
        gate=gate,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@asynccontextmanager
async def readers(settings: Settings) -> AsyncIterator[tuple[TopicReader, TopicReader]]:
    """(inbox.messages, inbox.status) readers."""
    messages = TopicReader(settings, settings.topics.messages.name, MessageEvent)
    status = TopicReader(settings, settings.topics.status.name, StatusEvent)
    try:
        yield messages, status
    finally:
        await messages.close()
        await status.close()


def checkpoint_reader(settings: Settings) -> TopicReader:
    return TopicReader(settings, settings.topics.checkpoints.name, CheckpointEvent)


def idle_on(folder: str) -> Callable[[list[StatusEvent]], bool]:
    """A ``wait_for`` condition: some status event says ``folder`` is idle."""
    return lambda events: any(e.state == "idle" and e.folder == folder for e in events)


def states(events: list[StatusEvent], folder: str | None = None) -> list[str]:
    return [e.state for e in events if folder is None or e.folder == folder]


def new_messages(events: list[MessageEvent], folder: str | None = None) -> list[MessageEvent]:
    return [
        e
        for e in events
        if e.event_type == "message.new" and (folder is None or e.folder == folder)
    ]


def service_env(settings: Settings) -> dict[str, str]:
    """Environment for ``inboxstream producer run`` in a subprocess, with these settings
    (pydantic-settings reads nested sections as JSON)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXSTREAM_")}
    env["INBOXSTREAM_KAFKA"] = settings.kafka.model_dump_json()
    env["INBOXSTREAM_TOPICS"] = settings.topics.model_dump_json()
    env["INBOXSTREAM_PRODUCER"] = settings.producer.model_dump_json()
    env["INBOXSTREAM_METRICS"] = settings.metrics.model_dump_json()
    return env


def deliver_many(user: str, count: int, *, start: int = 0) -> None:
    """``count`` small messages into INBOX over one LMTP session (about 2 ms each)."""
    import smtplib
    from email.message import EmailMessage

    from inboxstream.infra import dovecot

    ep = dovecot.endpoints()
    with smtplib.LMTP(ep.host, ep.lmtp_port, timeout=60) as lmtp:
        for i in range(start, start + count):
            msg = EmailMessage()
            msg["From"] = "Bulk <bulk@example.com>"
            msg["To"] = user
            msg["Subject"] = f"bulk {i}"
            msg["Message-ID"] = f"<bulk-{i}@example.com>"
            msg.set_content(f"message number {i}\n" + "lorem ipsum " * 40)
            lmtp.sendmail("bulk@example.com", [user], bytes(msg))


def start_producer(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``inboxstream producer run`` in a subprocess with these settings, as deployed."""
    cli = Path(sys.executable).with_name("inboxstream")
    return subprocess.Popen(
        [str(cli), "--log-level", "INFO", "producer", "run", "--no-progress"],
        env=service_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

"""The pieces wired together: sync inboxes into Kafka, run the ClickHouse sink.

These functions are what the CLI, the demo and the integration tests call, so all three run
the same code path against the same real services.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from producers.folder_sync import FolderProgress, SyncResult, sync_folder
from producers.folders import assign_roles
from producers.imap import ImapConnection, ImapEndpoint
from producers.publish import EventPublisher
from runtime.kafka import ensure_topics, make_consumer, make_producer
from runtime.settings import InboxSettings, Settings
from schemas.models import MessageEvent
from schemas.serde import serde_for
from sinks.clickhouse import ClickHouse, connect
from sinks.migrate import migrate
from sinks.rows import metadata_row
from sinks.runner import BatchingSink, TableSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboxSyncReport:
    inbox_id: str
    folders: dict[str, SyncResult]

    @property
    def published(self) -> int:
        return sum(r.published for r in self.folders.values())


def endpoint_for(inbox: InboxSettings) -> ImapEndpoint:
    return ImapEndpoint(
        host=inbox.imap_host,
        port=inbox.imap_port,
        security=inbox.imap_security,
        allow_unverified_certificate=inbox.allow_unverified_certificate,
        ca_file=inbox.ca_file,
    )


async def sync_inbox_once(
    settings: Settings,
    inbox: InboxSettings,
    *,
    on_progress: Callable[[FolderProgress], Awaitable[None] | None] | None = None,
) -> InboxSyncReport:
    """Publish every message of every selectable folder of one inbox, once."""
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        publisher = EventPublisher(producer, settings.topics)
        conn = await ImapConnection.open(
            endpoint_for(inbox), inbox.username, inbox.password.get_secret_value()
        )
        try:
            roles = assign_roles(await conn.list_folders())
            results = {}
            for wire_name, role in roles.items():
                results[wire_name] = await sync_folder(
                    conn,
                    publisher,
                    inbox_id=inbox.id,
                    folder=wire_name,
                    role=role,
                    log_attachments=inbox.log_attachments,
                    producer_name=socket.gethostname(),
                    on_progress=on_progress,
                )
        finally:
            await conn.logout()
        await producer.flush()
    finally:
        await producer.stop()
    return InboxSyncReport(inbox.id, results)


def open_clickhouse(settings: Settings) -> ClickHouse:
    """Connect and bring the schema up to date (migrations are idempotent)."""
    ch = connect(settings.clickhouse)
    migrate(ch)
    return ch


async def run_sink(
    settings: Settings,
    clickhouse: ClickHouse,
    *,
    stop: asyncio.Event | None = None,
    until_caught_up: bool = False,
    timeout: float = 120.0,
) -> BatchingSink:
    """Project inbox.messages into email_metadata until stopped (or caught up)."""
    await ensure_topics(settings.kafka, settings.topics)
    topics = settings.topics
    consumer = make_consumer(settings.kafka, topics.messages.name, group_id=settings.sink.group_id)
    dlq = make_producer(settings.kafka)
    await consumer.start()
    await dlq.start()
    sink = BatchingSink(
        consumer=consumer,
        dlq_producer=dlq,
        dlq_topic=topics.dead_letter.name,
        clickhouse=clickhouse,
        tables={
            topics.messages.name: TableSink(
                topics.messages.name,
                "email_metadata",
                serde_for(MessageEvent),
                lambda e: [metadata_row(e)],
            )
        },
        batch_size=settings.sink.batch_size,
        batch_timeout_s=settings.sink.batch_timeout_s,
    )
    try:
        if until_caught_up:
            await sink.wait_caught_up(timeout)
        else:
            await sink.run(stop)
    finally:
        await consumer.stop()
        await dlq.stop()
    return sink

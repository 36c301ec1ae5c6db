"""The pieces wired together: sync inboxes into Kafka, run the ClickHouse sink.

These functions are what the CLI, the demo and the integration tests call, so all three run
the same code path against the same real services.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer
from inboxstream.core.oauth import TokenSources
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.imap.connection import ImapConnection, ImapEndpoint, endpoint_for_inbox
from inboxstream.imap.exceptions import ProtocolError
from inboxstream.imap.folders import assign_roles
from inboxstream.producers.folder_sync import FolderProgress, SyncResult, sync_folder
from inboxstream.producers.parse_pool import ParsePool
from inboxstream.producers.publish import EventPublisher
from inboxstream.producers.status import StatusReporter
from inboxstream.producers.token_store import refresh_token_store
from inboxstream.sinks.clickhouse import ClickHouse, connect
from inboxstream.sinks.exceptions import ClickHouseError
from inboxstream.sinks.migrate import migrate
from inboxstream.sinks.retention import drop_expired_bodies, purge_deleted_engagements
from inboxstream.sinks.runner import BatchingSink, SinkStats
from inboxstream.sinks.tables import table_sinks

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0


@dataclass(frozen=True)
class InboxSyncReport:
    inbox_id: str
    folders: dict[str, SyncResult]

    @property
    def published(self) -> int:
        return sum(r.published for r in self.folders.values())


def endpoint_for(inbox: InboxSettings) -> ImapEndpoint:
    return endpoint_for_inbox(inbox)


async def sync_inbox_once(
    settings: Settings,
    inbox: InboxSettings,
    *,
    on_progress: Callable[[FolderProgress], Awaitable[None] | None] | None = None,
) -> InboxSyncReport:
    """Publish every message of every selectable folder of one inbox, once, with the
    ``inbox.status`` events the service publishes (connected, syncing n of m, idle per folder
    once caught up; disconnected with the reason when it ends or fails), so ``inbox status``
    shows what a one-shot sync did."""
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    pool = ParsePool(settings.producer.parse_workers)
    name = f"{socket.gethostname()}:{os.getpid()}"
    try:
        publisher = EventPublisher(producer, settings.topics, pool)
        status = StatusReporter(
            publisher, inbox.id, f"{inbox.imap_host}:{inbox.imap_port}", producer=name
        )
        try:
            tokens = TokenSources(refresh_token_store(settings))
            conn = await ImapConnection.open(
                endpoint_for(inbox), inbox.username, tokens.credentials(inbox)
            )
        except Exception as exc:
            await status.emit("disconnected", error=exc)
            raise
        await status.emit("connected", reason="one-shot sync")
        try:

            async def progress(p: FolderProgress) -> None:
                await status.progress(p.folder, p.done, p.total)
                if on_progress is not None:
                    maybe = on_progress(p)
                    if maybe is not None:
                        await maybe

            roles = assign_roles(await conn.list_folders())
            results = {}
            for wire_name, role in roles.items():
                try:
                    selected = await conn.select(wire_name)
                except ProtocolError as exc:
                    if conn.protocol.closed.is_set():
                        raise
                    # The server listed it but will not open it (a \Noselect parent it did
                    # not flag, no rights, deleted meanwhile): skip it, sync the others.
                    log.warning("%s: skipping folder %r: %s", inbox.id, wire_name, exc)
                    continue
                results[wire_name] = await sync_folder(
                    conn,
                    publisher,
                    inbox_id=inbox.id,
                    folder=wire_name,
                    role=role,
                    log_attachments=inbox.log_attachments,
                    producer_name=socket.gethostname(),
                    on_progress=progress,
                    selected=selected,
                )
                done = results[wire_name]
                await status.progress(wire_name, done.published, done.folder.exists, final=True)
                await status.emit("idle", folder=wire_name)
        except Exception as exc:
            await status.emit("disconnected", error=exc)
            raise
        finally:
            await conn.logout()
        await status.emit("disconnected", reason="one-shot sync finished")
        await producer.flush()
    finally:
        await producer.stop()
        pool.close()
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
    purge_every_s: float | None = PURGE_EVERY_S,
    stats: SinkStats | None = None,
    on_start: Callable[[BatchingSink], None] | None = None,
) -> BatchingSink:
    """Project every sink topic into its table until stopped (or caught up).

    inbox.messages, inbox.bodies, inbox.status, inbox.threads, crm.engagements and crm.outbound
    are read by one consumer group (one commit covers them all). While it runs, the sink also
    purges engagements deleted more than 90 days ago, once per ``purge_every_s``. Pass
    ``stats`` to watch the counters while it runs.
    """
    tune_for_streaming()
    await ensure_topics(settings.kafka, settings.topics)
    routes = table_sinks(settings.topics)
    # 4 MiB per partition per fetch (default 1 MiB) so a batch can fill up to batch_size
    # records of ~1 KB headers in one round trip instead of several smaller inserts.
    consumer = make_consumer(
        settings.kafka,
        *routes,
        group_id=settings.sink.group_id,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    dlq = make_producer(settings.kafka)
    await consumer.start()
    await dlq.start()
    sink = BatchingSink(
        consumer=consumer,
        dlq_producer=dlq,
        dlq_topic=settings.topics.dead_letter.name,
        clickhouse=clickhouse,
        tables=routes,
        batch_size=settings.sink.batch_size,
        batch_timeout_s=settings.sink.batch_timeout_s,
        linger_s=settings.sink.linger_s,
        stats=stats or SinkStats(),
        group=settings.sink.group_id,
    )
    if on_start is not None:
        on_start(sink)
    purger = (
        asyncio.create_task(_purge_periodically(clickhouse, purge_every_s))
        if purge_every_s is not None and not until_caught_up
        else None
    )
    try:
        if until_caught_up:
            await sink.wait_caught_up(timeout)
        else:
            await sink.run(stop)
    finally:
        if purger is not None:
            purger.cancel()
        await consumer.stop()
        await dlq.stop()
    return sink


async def _purge_periodically(clickhouse: ClickHouse, every_s: float) -> None:
    while True:
        try:
            await asyncio.to_thread(purge_deleted_engagements, clickhouse)
            await asyncio.to_thread(drop_expired_bodies, clickhouse)
        except ClickHouseError as exc:  # an outage: the next round tries again
            log.warning("engagement purge failed, will retry: %s", exc)
        await asyncio.sleep(every_s)

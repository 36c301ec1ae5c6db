"""``inbox.status`` events: what each inbox's connections are doing, for people and alerting.

States: connected, syncing (n of m, per folder), idle (caught up, waiting for changes),
disconnected (reason, error kind, retriable), resync (UIDVALIDITY changed). Reasons come from
our typed errors, whose messages never contain a password.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

from inboxstream.core.kafka import client_options, read_to_end
from inboxstream.core.metrics import INBOX_STATE
from inboxstream.core.settings import KafkaSettings
from inboxstream.errors import InboxstreamError
from inboxstream.producers.checkpoints import assign_all
from inboxstream.producers.publish import EventPublisher
from inboxstream.schemas.exceptions import DecodeError
from inboxstream.schemas.models import InboxState, StatusEvent
from inboxstream.schemas.serde import serde_for

log = logging.getLogger(__name__)

#: A backfill reports progress at most this often per folder (plus its first and last batch).
PROGRESS_INTERVAL_S = 1.0


@dataclass
class StatusReporter:
    """Publishes one inbox's status events (key = inbox id, so they stay in order)."""

    publisher: EventPublisher
    inbox_id: str
    server: str | None = None
    producer: str = ""
    _last_progress: dict[str, float] = field(default_factory=dict, init=False)
    sent: int = field(default=0, init=False)

    async def emit(
        self,
        state: InboxState,
        *,
        reason: str | None = None,
        error: BaseException | None = None,
        folder: str | None = None,
        done: int | None = None,
        total: int | None = None,
    ) -> None:
        INBOX_STATE.labels(self.inbox_id).state(state)
        kind = getattr(error, "kind", None) if error is not None else None
        retriable = getattr(error, "retriable", None) if error is not None else None
        if error is not None and not isinstance(error, InboxstreamError):
            kind = kind or "internal"
            retriable = True if retriable is None else retriable
        event = StatusEvent(
            event_id=uuid.uuid4().hex,
            inbox_id=self.inbox_id,
            state=state,
            reason=reason if reason is not None else (str(error)[:500] if error else None),
            error_kind=kind,
            retriable=retriable,
            folder=folder,
            progress_done=done,
            progress_total=total,
            server=self.server,
            at=datetime.now(UTC),
            producer=self.producer,
        )
        log.info(
            "%s: %s%s%s",
            self.inbox_id,
            state,
            f" {folder}" if folder else "",
            f" ({event.reason})" if event.reason else "",
            extra={"inbox": self.inbox_id, "folder": folder},
        )
        try:
            await (await self.publisher.send(event, self.inbox_id))
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - status is best effort; sync must go on
            log.warning("%s: could not publish %s status: %s", self.inbox_id, state, exc)

    async def progress(self, folder: str, done: int, total: int, *, final: bool = False) -> None:
        """``syncing`` n of m, throttled so a big backfill does not flood the topic."""
        now = time.monotonic()
        last = self._last_progress.get(folder)
        if not final and last is not None and now - last < PROGRESS_INTERVAL_S:
            return
        self._last_progress[folder] = now
        await self.emit("syncing", folder=folder, done=done, total=total)


async def latest_status(
    kafka: KafkaSettings, topic: str, *, per_partition: int = 20_000
) -> dict[str, StatusEvent]:
    """The newest status event of every inbox, from the tail of ``inbox.status``.

    Reads at most ``per_partition`` records from the end of each partition: plenty for the
    latest state of hundreds of inboxes, and bounded however old the topic is.
    """
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    latest: dict[str, StatusEvent] = {}
    try:
        tps = await assign_all(consumer, topic)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begin[tp], end[tp] - per_partition))
        serde = serde_for(StatusEvent)
        async for records in read_to_end(consumer, tps):
            for record in records:
                try:
                    event = serde.decode(record.value, record.headers)
                except DecodeError:
                    continue
                if event.inbox_id not in latest or latest[event.inbox_id].at <= event.at:
                    latest[event.inbox_id] = event
    finally:
        await consumer.stop()
    return latest

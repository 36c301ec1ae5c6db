"""Which topic lands in which table, and how: the sink's routing, in one place."""

from __future__ import annotations

from typing import Any

from inboxstream.core.settings import TopicSettings
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    MessageEvent,
    OutboundEvent,
    StatusEvent,
    ThreadEvent,
)
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.rows import (
    body_row,
    engagement_row,
    metadata_row,
    outbound_row,
    status_row,
    thread_row,
)
from inboxstream.sinks.runner import TableSink


def table_sinks(topics: TopicSettings) -> dict[str, TableSink[Any]]:
    """Every sink topic keyed by its (possibly prefixed) name."""
    sinks: list[TableSink[Any]] = [
        TableSink(
            topics.messages.name,
            "email_metadata",
            serde_for(MessageEvent),
            lambda e: [metadata_row(e)],
        ),
        TableSink(topics.bodies.name, "bodies", serde_for(BodyEvent), lambda e: [body_row(e)]),
        TableSink(
            topics.status.name, "inbox_status", serde_for(StatusEvent), lambda e: [status_row(e)]
        ),
        TableSink(
            topics.threads.name, "threads", serde_for(ThreadEvent), lambda e: [thread_row(e)]
        ),
        TableSink(
            topics.engagements.name,
            "engagements",
            serde_for(EngagementEvent),
            lambda e: [engagement_row(e)],
        ),
        TableSink(
            topics.crm_outbound.name,
            "crm_outbound",
            serde_for(OutboundEvent),
            lambda e: [outbound_row(e)],
        ),
    ]
    return {s.topic: s for s in sinks}

"""Which topic lands in which table, and how: the sink's routing, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from inboxstream.core.contracts import TOPICS
from inboxstream.core.settings import TopicSettings
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    Event,
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

#: How an event of each model becomes its table's rows; which table and topic is the
#: registry's (``core.contracts.TOPICS``).
ROWS: dict[type[Event], Callable[[Any], dict[str, Any]]] = {
    MessageEvent: metadata_row,
    BodyEvent: body_row,
    StatusEvent: status_row,
    ThreadEvent: thread_row,
    EngagementEvent: engagement_row,
    OutboundEvent: outbound_row,
}


def _one_row(row: Callable[[Any], dict[str, Any]]) -> Callable[[Any], list[Mapping[str, Any]]]:
    return lambda event: [row(event)]


def table_sinks(topics: TopicSettings) -> dict[str, TableSink[Any]]:
    """Every sink topic keyed by its (possibly prefixed) name."""
    sinks = [
        TableSink(c.spec(topics).name, c.table, serde_for(c.model), _one_row(ROWS[c.model]))
        for c in TOPICS
        if c.table is not None
    ]
    return {s.topic: s for s in sinks}

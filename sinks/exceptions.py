"""Errors of the ClickHouse side."""

from __future__ import annotations

from inboxstream.errors import InboxstreamError


class ClickHouseError(InboxstreamError):
    """A statement failed. ``retriable`` is set when the server was unreachable or busy."""


class PathLockedError(ClickHouseError):
    """Another process holds the embedded chDB path: only one process may open it."""


class BadRowError(ClickHouseError):
    """ClickHouse refused the data itself (a value it cannot parse or store). Retrying the same
    rows cannot help; the sink isolates the offending row and dead-letters it."""

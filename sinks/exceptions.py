"""Errors of the ClickHouse side."""

from __future__ import annotations

from runtime.errors import InboxstreamError


class ClickHouseError(InboxstreamError):
    """A statement failed. ``retriable`` is set when the server was unreachable or busy."""


class PathLockedError(ClickHouseError):
    """Another process holds the embedded chDB path: only one process may open it."""

"""Errors of the stream processors, under the project's root error (``inboxstream.errors``):
``retriable`` tells the loop whether a retry can help."""

from __future__ import annotations

from inboxstream.errors import InboxstreamError


class ProcessorError(InboxstreamError):
    """Root of processor errors."""


class StateRestoreError(ProcessorError):
    """A changelog could not be read back; the instance must not process without its state."""

    retriable = True


class TopologyError(ProcessorError):
    """Input and internal topics are not co-partitioned (different partition counts)."""

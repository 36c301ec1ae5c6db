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


class EngineProcessError(ProcessorError):
    """The engine process failed one request (a bug, not bad input: bad records are
    dead-lettered); the transaction aborts and the partition is restored and rewound."""

    retriable = True


class EngineProcessDiedError(ProcessorError):
    """The engine process is gone: every partition's state went with it, so the instance
    stops (nothing it processed since the last commits was committed) and a restart
    restores the state from the changelogs."""

    retriable = True

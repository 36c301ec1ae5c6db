"""Errors of the stream processors. ``retriable`` tells the loop whether a retry can help."""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of processor errors."""

    retriable: bool = False


class PoisonRecordError(ProcessorError):
    """One input record cannot be processed (undecodable, impossible values): dead-letter it."""


class StateRestoreError(ProcessorError):
    """A changelog could not be read back; the instance must not process without its state."""

    retriable = True


class TopologyError(ProcessorError):
    """Input and internal topics are not co-partitioned (different partition counts)."""

"""Serialisation errors: library exceptions are translated into these at the serde boundary."""

from __future__ import annotations

from inboxstream.errors import InboxstreamError


class SerdeError(InboxstreamError):
    """A record could not be (de)serialised. Never retriable: the bytes will not change."""


class EncodeError(SerdeError):
    """An event does not fit its schema."""


class DecodeError(SerdeError):
    """Bytes from Kafka are not a record we can read: unknown schema, corrupt, or invalid."""


class UnknownSchemaError(SerdeError):
    """No schema with that name or fingerprint is known to this process."""

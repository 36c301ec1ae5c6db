"""Expected failures of a command, as one line and a documented exit code (sysexits.h).

A person running ``inboxstream`` with a broken config, a Kafka that is down or a file that is
not an mbox needs the reason, not a traceback. ``describe`` maps what the commands raise for
those cases to an exit code and one line; anything else is a bug and keeps its traceback.

| code | meaning |
| --- | --- |
| 1 | the command failed for a reason it states (an inbox refused, a check failed...) |
| 2 | wrong usage (click's own) |
| 65 | bad input: a file or a query that cannot be what the command takes |
| 69 | a service is unavailable: Kafka, the schema registry, ClickHouse or a mail server |
| 78 | bad configuration: the config file or an INBOXSTREAM_* variable |
"""

from __future__ import annotations

import tomllib

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from pydantic import ValidationError

from inboxstream.core.schema_registry import SchemaRegistryUnavailableError
from inboxstream.core.settings import SettingsError, describe_validation_error
from inboxstream.errors import InboxstreamError

EX_FAILED = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_CONFIG = 78


class BadInputError(InboxstreamError):
    """A file or a query the command cannot take (exit 65)."""

    retriable = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an expected failure; None for a bug (keep the traceback)."""
    if isinstance(exc, BadInputError):
        return EX_DATAERR, _first_line(exc)
    if isinstance(exc, SettingsError):
        return EX_CONFIG, f"configuration: {_first_line(exc)}"
    if isinstance(exc, tomllib.TOMLDecodeError):
        return EX_CONFIG, f"configuration: the config file is not valid TOML ({exc})"
    if isinstance(exc, ValidationError):
        return EX_CONFIG, f"configuration: {describe_validation_error(exc)}"
    if isinstance(exc, KafkaConnectionError | NodeNotReadyError | KafkaTimeoutError):
        return EX_UNAVAILABLE, (
            f"Kafka is unavailable ({_first_line(exc)}); is it running? "
            "(inboxstream infra start kafka, or set INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS)"
        )
    if isinstance(exc, SchemaRegistryUnavailableError):
        return EX_UNAVAILABLE, _first_line(exc)
    if isinstance(exc, ConnectionRefusedError):
        return EX_UNAVAILABLE, f"a service refused the connection ({_first_line(exc)})"
    if isinstance(exc, InboxstreamError):
        return EX_FAILED, _first_line(exc)
    return None

"""One fetched message → its ready-to-send Avro records. Pure logic, picklable in and out.

This is the CPU-heavy half of a backfill (MIME parsing, model building, Avro encoding), cut
out so it can run inline or in a worker process (producers/parse_pool.py) with the same result.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from inboxstream.core.contracts import MAX_EVENT_BYTES
from inboxstream.producers.parse import (
    FetchedMessage,
    message_identity,
    parse_records,
    role_of,
    split_header_block,
    synthetic_message_id,
)
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import BodyEvent, MessageEvent, utf8_safe
from inboxstream.schemas.serde import AvroSerde, serde_for

log = logging.getLogger(__name__)

TopicKind = Literal["messages", "bodies"]


class EncodedRecord(NamedTuple):
    """One Avro value and what the publisher needs to send it (topic and event-type header).

    Tuples, not dataclasses: they cross the worker pipe for every message, and a tuple
    pickles and unpickles several times faster than a dataclass (``producers/parse_pool.py``)."""

    topic: TopicKind
    value: bytes
    event_type: str
    #: Written in the registry's wire format (schema id in front): decided where the value was
    #: encoded, maybe a worker process, so the headers always say what the value holds.
    framed: bool = False


class EncodedMessage(NamedTuple):
    uid: int
    records: tuple[EncodedRecord, ...]


def encode_message(
    fetched: FetchedMessage, *, log_attachments: bool = True, producer: str = ""
) -> EncodedMessage:
    """Parse and encode both events of one message. Never raises for malformed mail."""
    return encode_chunk([fetched], log_attachments, producer)[0]


def encode_chunk(
    chunk: list[FetchedMessage], log_attachments: bool, producer: str, *, fast: bool = True
) -> list[EncodedMessage]:
    """A worker process's unit of work: a slice of one FETCH batch (amortises the IPC).

    The records go straight from the parser's dicts to Avro (no model round trip: the parser's
    types are the schema's), each value the bytes cavro returns. parse_records never
    raises, but one unencodable field must not wedge the folder (every retry would hit it
    again): that message's identity is published with the reason instead.
    """
    messages, bodies = serde_for(MessageEvent), serde_for(BodyEvent)
    messages_framed, bodies_framed = messages.framed, bodies.framed  # once a chunk
    out: list[EncodedMessage] = []
    for fetched in chunk:
        records: list[EncodedRecord] = []
        fallback: MessageEvent | None = None
        try:
            message, body = parse_records(
                fetched, log_attachments=log_attachments, producer=producer, fast=fast
            )
        except Exception as exc:
            # parse_records never raises by design; a bug that makes it (or an annotation the
            # compiled module enforces and a hostile message breaks) must cost this message's
            # fields, not the batch: the folder would stop on it at every retry.
            log.exception(
                "%s %s UID %d: parse failed", fetched.inbox_id, fetched.folder, fetched.uid
            )
            fallback = identity_only(_bare_identity(fetched, producer), exc)
        else:
            try:
                records.append(
                    EncodedRecord(
                        "messages", _value(messages, message), "message.new", messages_framed
                    )
                )
                records.append(
                    EncodedRecord(
                        "bodies", _value(bodies, body), BodyEvent.schema_name, bodies_framed
                    )
                )
            except EncodeError as exc:
                log.warning("%s %s UID %d: %s", fetched.inbox_id, fetched.folder, fetched.uid, exc)
                fallback = identity_only(MessageEvent.model_validate(message), exc)
        if fallback is not None:
            value = messages.encode(fallback)
            records.append(EncodedRecord("messages", value, fallback.event_type, messages_framed))
        out.append(EncodedMessage(fetched.uid, tuple(records)))
    return out


def _value(serde: AvroSerde[Any], record: dict[str, Any]) -> bytes:
    """One record's Avro value, refused when Kafka would refuse it at send (on every retry)."""
    value = serde.encode_record(record)
    if len(value) > MAX_EVENT_BYTES:
        raise EncodeError(f"event is {len(value)} bytes, over the {MAX_EVENT_BYTES} byte limit")
    return value


def _bare_identity(fetched: FetchedMessage, producer: str) -> MessageEvent:
    """The identity of a message whose parse failed, from the fetch alone."""
    header_block = split_header_block(fetched.raw)
    return MessageEvent(
        event_id=message_identity(fetched),
        event_type="message.new",
        inbox_id=fetched.inbox_id,
        folder=utf8_safe(fetched.folder),
        folder_role=role_of(fetched),
        uidvalidity=fetched.uidvalidity,
        uid=fetched.uid,
        modseq=fetched.modseq,
        message_id=synthetic_message_id(header_block),
        message_id_synthetic=True,
        size=fetched.size if fetched.size is not None else len(fetched.raw),
        raw_headers=b"",
        observed_at=datetime.now(UTC),
        producer=producer,
    )


def identity_only(message: MessageEvent, exc: Exception) -> MessageEvent:
    """The fields that identify a message (all ASCII or numbers), plus why the rest is missing."""
    safe_id = message.message_id.encode("ascii", "replace").decode()
    return MessageEvent(
        event_id=message.event_id,
        event_type=message.event_type,
        inbox_id=message.inbox_id,
        folder=message.folder,
        folder_role=message.folder_role,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        modseq=message.modseq,
        message_id=safe_id,
        message_id_synthetic=message.message_id_synthetic,
        size=message.size,
        raw_headers=b"",
        parse_error=f"event could not be encoded, fields dropped: {exc}"[:1000],
        observed_at=message.observed_at,
        producer=message.producer,
    )

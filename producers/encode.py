"""One fetched message → its ready-to-send Avro records. Pure logic, picklable in and out.

This is the CPU-heavy half of a backfill (MIME parsing, model building, Avro encoding), cut
out so it can run inline or in a worker process (producers/parse_pool.py) with the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from inboxstream.core.contracts import MAX_EVENT_BYTES
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import BodyEvent, MessageEvent
from inboxstream.schemas.serde import serde_for

log = logging.getLogger(__name__)

TopicKind = Literal["messages", "bodies"]


@dataclass(frozen=True)
class EncodedRecord:
    """One Avro value and what the publisher needs to send it (topic and event-type header)."""

    topic: TopicKind
    value: bytes
    event_type: str


@dataclass(frozen=True)
class EncodedMessage:
    uid: int
    records: tuple[EncodedRecord, ...]


def encode_message(
    fetched: FetchedMessage, *, log_attachments: bool = True, producer: str = ""
) -> EncodedMessage:
    """Parse and encode both events of one message. Never raises for malformed mail.

    parse_message never raises, but one unencodable field must not wedge the folder (every
    retry would hit it again): the message's identity is published with the reason instead.
    """
    message, body = parse_message(fetched, log_attachments=log_attachments, producer=producer)
    records: list[EncodedRecord] = []
    try:
        records.append(
            EncodedRecord(
                "messages", _sized(serde_for(MessageEvent).encode(message)), message.event_type
            )
        )
        records.append(
            EncodedRecord(
                "bodies", _sized(serde_for(BodyEvent).encode(body)), BodyEvent.schema_name
            )
        )
    except EncodeError as exc:
        log.warning("%s %s UID %d: %s", fetched.inbox_id, fetched.folder, fetched.uid, exc)
        fallback = identity_only(message, exc)
        records.append(
            EncodedRecord("messages", serde_for(MessageEvent).encode(fallback), fallback.event_type)
        )
    return EncodedMessage(fetched.uid, tuple(records))


def _sized(value: bytes) -> bytes:
    """The value, if Kafka will take it: a larger one would fail at send, on every retry."""
    if len(value) > MAX_EVENT_BYTES:
        raise EncodeError(f"event is {len(value)} bytes, over the {MAX_EVENT_BYTES} byte limit")
    return value


def encode_chunk(
    chunk: list[FetchedMessage], log_attachments: bool, producer: str
) -> list[EncodedMessage]:
    """A worker process's unit of work: a slice of one FETCH batch (amortises the IPC)."""
    return [encode_message(f, log_attachments=log_attachments, producer=producer) for f in chunk]


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

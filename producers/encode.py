"""One fetched message → its ready-to-send Avro records. Pure logic, picklable in and out.

This is the CPU-heavy half of a backfill (MIME parsing, model building, Avro encoding), cut
out so it can run inline or in a worker process (producers/parse_pool.py) with the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from inboxstream.core.contracts import MAX_EVENT_BYTES
from inboxstream.producers.parse import FetchedMessage, parse_records
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import BodyEvent, MessageEvent
from inboxstream.schemas.serde import AvroSerde, serde_for

log = logging.getLogger(__name__)

TopicKind = Literal["messages", "bodies"]


@dataclass(frozen=True)
class EncodedRecord:
    """One Avro value and what the publisher needs to send it (topic and event-type header)."""

    topic: TopicKind
    value: bytes
    event_type: str
    #: Written in the registry's wire format (schema id in front): decided where the value was
    #: encoded, maybe a worker process, so the headers always say what the value holds.
    framed: bool = False


@dataclass(frozen=True)
class EncodedMessage:
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
    messages_writer = _Writer(serde_for(MessageEvent))
    bodies_writer = _Writer(serde_for(BodyEvent))
    out: list[EncodedMessage] = []
    for fetched in chunk:
        message, body = parse_records(
            fetched, log_attachments=log_attachments, producer=producer, fast=fast
        )
        records: list[EncodedRecord] = []
        try:
            records.append(
                EncodedRecord(
                    "messages",
                    messages_writer.write(message),
                    "message.new",
                    messages_writer.framed,
                )
            )
            records.append(
                EncodedRecord(
                    "bodies", bodies_writer.write(body), BodyEvent.schema_name, bodies_writer.framed
                )
            )
        except EncodeError as exc:
            log.warning("%s %s UID %d: %s", fetched.inbox_id, fetched.folder, fetched.uid, exc)
            fallback = identity_only(MessageEvent.model_validate(message), exc)
            records.append(
                EncodedRecord(
                    "messages",
                    serde_for(MessageEvent).encode(fallback),
                    fallback.event_type,
                    serde_for(MessageEvent).framed,
                )
            )
        out.append(EncodedMessage(fetched.uid, tuple(records)))
    return out


class _Writer:
    """Schemaless Avro values of one topic, each checked against Kafka's size limit."""

    def __init__(self, serde: AvroSerde[Any]) -> None:
        self._serde = serde
        self.framed = serde.framed

    def write(self, record: dict[str, Any]) -> bytes:
        value = self._serde.encode_record(record)
        if len(value) > MAX_EVENT_BYTES:  # Kafka would refuse it at send, on every retry
            raise EncodeError(f"event is {len(value)} bytes, over the {MAX_EVENT_BYTES} byte limit")
        return value


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

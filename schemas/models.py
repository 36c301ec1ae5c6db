"""Frozen event models, one per topic. Each mirrors its Avro schema field for field.

``tests/unit/test_schemas.py`` checks that every model field matches its schema (name, nullability,
default), so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def utc_millis(value: datetime) -> datetime:
    """Avro timestamp-millis keeps milliseconds in UTC; normalise so a round trip is exact.

    A naive datetime is taken as UTC (mail servers and parsers hand us both kinds).
    """
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # already normal: what the processor builds from epoch ms, every event
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


Timestamp = Annotated[datetime, AfterValidator(utc_millis)]


def utf8_safe(value: str) -> str:
    """Avro strings are UTF-8, and a hostile server's folder name can decode to lone
    surrogates: those become backslash escapes (``\\udcff``), so the event is still written
    and the name stays readable. Valid text is returned unchanged."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


#: A folder name as events carry it (see ``utf8_safe``); event ids hash the server's own name.
FolderName = Annotated[str, AfterValidator(utf8_safe)]


class Event(BaseModel):
    """Base for every topic's payload: frozen, no unknown fields, named by its Avro schema."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    schema_name: ClassVar[str]


class Address(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = None
    email: str


class AddressRecord(TypedDict):
    """``Address`` as its Avro record (what the producer's hot path builds without a model)."""

    name: str | None
    email: str


class AttachmentRecord(TypedDict):
    """``Attachment`` as its Avro record."""

    filename: str | None
    content_type: str
    size: int
    sha256: str
    content_id: str | None


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    filename: str | None = None
    content_type: str
    size: int
    sha256: str
    content_id: str | None = None


FolderRole = Literal["inbox", "sent", "other"]
MessageEventType = Literal["message.new", "message.flags", "message.expunged"]


class MessageEvent(Event):
    """``inbox.messages``: envelope and triage headers of one message in one folder."""

    schema_name: ClassVar[str] = "inbox.messages"

    event_id: str
    event_type: MessageEventType = "message.new"
    inbox_id: str
    folder: FolderName
    folder_role: FolderRole = "other"
    uidvalidity: int
    uid: int
    modseq: int | None = None
    message_id: str
    message_id_synthetic: bool = False
    in_reply_to: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    references_dropped: int = 0
    subject: str | None = None
    from_: Address | None = Field(default=None, alias="from")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    date: Timestamp | None = None
    internal_date: Timestamp | None = None
    size: int
    flags: list[str] = Field(default_factory=list)
    has_attachments: bool = False
    raw_headers: bytes
    parse_error: str | None = None
    observed_at: Timestamp
    producer: str = ""
    # v3: why no person wrote it (mail/automatic.py): bounce | auto_reply | auto_generated |
    # bulk; None for mail a person wrote. Automated mail is never a CRM reply.
    automated: str | None = None
    # v4: Gmail (X-GM-EXT-1): the message's id across its labels, and the labels (folders).
    gm_msgid: str | None = None
    gm_labels: list[str] = Field(default_factory=list)


class BodyEvent(Event):
    """``inbox.bodies``: decoded text/html and attachment metadata (7-day retention)."""

    schema_name: ClassVar[str] = "inbox.bodies"

    event_id: str
    inbox_id: str
    folder: FolderName
    uidvalidity: int
    uid: int
    message_id: str
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    attachments_logged: bool = True
    attachments_skipped_reason: str | None = None
    size: int
    date: Timestamp | None = None
    internal_date: Timestamp | None = None
    parse_error: str | None = None
    observed_at: Timestamp


InboxState = Literal["connected", "syncing", "idle", "disconnected", "resync"]


class StatusEvent(Event):
    """``inbox.status``: connection state changes of one inbox."""

    schema_name: ClassVar[str] = "inbox.status"

    event_id: str
    inbox_id: str
    state: InboxState
    reason: str | None = None
    error_kind: str | None = None
    retriable: bool | None = None
    folder: FolderName | None = None
    progress_done: int | None = None
    progress_total: int | None = None
    server: str | None = None
    at: Timestamp
    producer: str = ""  # v2: the producer process (host:pid); which fleet member owns the inbox


OutboundKind = Literal["sent", "logged", "sequence"]


class OutboundEvent(Event):
    """``crm.outbound``: a mail the CRM sent or had BCC-logged."""

    schema_name: ClassVar[str] = "crm.outbound"

    event_id: str
    message_id: str
    kind: OutboundKind = "sent"
    inbox_id: str | None = None
    contact_email: str | None = None
    contact_name: str | None = None
    subject: str | None = None
    sequence_id: str | None = None
    crm_ref: str | None = None
    sent_at: Timestamp


ThreadEventType = Literal["thread.assigned", "thread.merged"]


class ThreadEvent(Event):
    """``inbox.threads``: which conversation a message belongs to, or a merge of two."""

    schema_name: ClassVar[str] = "inbox.threads"

    event_id: str
    event_type: ThreadEventType = "thread.assigned"
    inbox_id: str
    message_event_id: str | None = None
    message_id: str | None = None
    thread_id: str
    merged_thread_ids: list[str] = Field(default_factory=list)
    root_message_id: str | None = None
    base_subject: str | None = None
    algorithm: Literal["rfc5256", "references"] = "rfc5256"
    occurred_at: Timestamp


class ThreadRecord(TypedDict):
    """``ThreadEvent`` as its Avro record, ``occurred_at`` in epoch milliseconds: what the
    stream processor builds for each message without a model (the schema types every field
    when it is encoded; ``processors.engine.Emit.event`` gives the model)."""

    event_id: str
    event_type: ThreadEventType
    inbox_id: str
    message_event_id: str | None
    message_id: str | None
    thread_id: str
    merged_thread_ids: list[str]
    root_message_id: str | None
    base_subject: str | None
    algorithm: Literal["rfc5256", "references"]
    occurred_at: int


class AttachmentRefRecord(TypedDict):
    """``AttachmentRef`` as its Avro record."""

    filename: str | None
    content_type: str
    size: int
    sha256: str


class AttachmentRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    filename: str | None = None
    content_type: str
    size: int
    sha256: str


EngagementEventType = Literal["engagement.created", "engagement.deleted", "body.expired"]


class EngagementEvent(Event):
    """``crm.engagements``: a reply to CRM mail, or a lifecycle change of one."""

    schema_name: ClassVar[str] = "crm.engagements"

    event_id: str
    event_type: EngagementEventType = "engagement.created"
    engagement_id: str
    inbox_id: str
    message_id: str
    thread_id: str | None = None
    crm_message_id: str
    matched_by: Literal["in_reply_to", "references"] = "in_reply_to"
    crm_kind: OutboundKind = "sent"
    crm_ref: str | None = None
    contact_email: str | None = None
    contact_name: str | None = None
    subject: str | None = None
    body_text: str | None = None
    attachments: list[AttachmentRef] = Field(default_factory=list)
    occurred_at: Timestamp


class EngagementEventRecord(TypedDict):
    """``EngagementEvent`` as its Avro record, ``occurred_at`` in epoch milliseconds (as
    ``ThreadRecord``)."""

    event_id: str
    event_type: EngagementEventType
    engagement_id: str
    inbox_id: str
    message_id: str
    thread_id: str | None
    crm_message_id: str
    matched_by: Literal["in_reply_to", "references"]
    crm_kind: OutboundKind
    crm_ref: str | None
    contact_email: str | None
    contact_name: str | None
    subject: str | None
    body_text: str | None
    attachments: list[AttachmentRefRecord]
    occurred_at: int


class CheckpointEvent(Event):
    """``inbox.checkpoints`` (compacted): how far one folder is in Kafka, for resume/takeover."""

    schema_name: ClassVar[str] = "inbox.checkpoints"

    inbox_id: str
    folder: FolderName
    uidvalidity: int
    last_uid: int
    highestmodseq: int | None = None
    owner: str = ""
    updated_at: Timestamp
    known_uids: str | None = None  # v2: UIDs <= last_uid at the last check, without QRESYNC


ALL_EVENTS: tuple[type[Event], ...] = (
    MessageEvent,
    BodyEvent,
    StatusEvent,
    OutboundEvent,
    ThreadEvent,
    EngagementEvent,
    CheckpointEvent,
)

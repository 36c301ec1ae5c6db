"""What the engine reads of its two busiest inputs, and nothing more.

The processor reads every inbox.messages and inbox.bodies record but needs a dozen fields of a
message and three of a body (the rest of a body only for the few that become engagements). So
it decodes only those fields (``AvroSerde.decode_fields``: a projection, timestamps as epoch
milliseconds, no model) into these records: no datetime built and read back, no pydantic
validation of what the Avro schema already guarantees, no body text decoded to be dropped.
``of`` builds the same records from model events, for the in-memory harness and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inboxstream.processors.records import AttachmentInfo, Body, CrmRecord
from inboxstream.schemas.models import BodyEvent, MessageEvent

#: The inbox.messages fields ``MessageIn`` is made of (the newest schema's names).
MESSAGE_FIELDS = (
    "event_id",
    "event_type",
    "inbox_id",
    "folder_role",
    "message_id",
    "in_reply_to",
    "references",
    "subject",
    "from",
    "date",
    "internal_date",
    "observed_at",
    "automated",
)
#: The inbox.bodies fields ``BodyHead`` is made of: enough to route a body.
BODY_HEAD_FIELDS = ("event_id", "inbox_id", "observed_at")
#: The inbox.bodies fields an engagement carries (``Body``): never the html.
BODY_FIELDS = ("text", "attachments")
#: The crm.outbound fields the ``crm`` store keeps (``CrmRecord``), and its key.
OUTBOUND_FIELDS = (
    "message_id",
    "kind",
    "inbox_id",
    "contact_email",
    "contact_name",
    "subject",
    "crm_ref",
    "sequence_id",
)


def epoch_ms(value: datetime | None) -> int | None:
    """A model timestamp as the epoch milliseconds Avro stores (integer arithmetic: a float
    round trip can lose the last millisecond)."""
    if value is None:
        return None
    delta = value - datetime(1970, 1, 1, tzinfo=value.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@dataclass(frozen=True, slots=True)
class MessageIn:
    """One inbox.messages event as the engine reads it."""

    event_id: str
    event_type: str
    inbox_id: str
    folder_role: str
    message_id: str
    in_reply_to: list[str]
    references: list[str]
    subject: str | None
    from_email: str | None
    from_name: str | None
    date_ms: int | None
    internal_date_ms: int | None
    observed_ms: int
    automated: str | None = None

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        event_id: str,
        event_type: str,
        inbox_id: str,
        folder_role: str,
        message_id: str,
        in_reply_to: list[str],
        references: list[str],
        subject: str | None,
        from_email: str | None,
        from_name: str | None,
        date_ms: int | None,
        internal_date_ms: int | None,
        observed_ms: int,
        automated: str | None = None,
    ) -> None:
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "event_type", event_type)
        object.__setattr__(self, "inbox_id", inbox_id)
        object.__setattr__(self, "folder_role", folder_role)
        object.__setattr__(self, "message_id", message_id)
        object.__setattr__(self, "in_reply_to", in_reply_to)
        object.__setattr__(self, "references", references)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "from_email", from_email)
        object.__setattr__(self, "from_name", from_name)
        object.__setattr__(self, "date_ms", date_ms)
        object.__setattr__(self, "internal_date_ms", internal_date_ms)
        object.__setattr__(self, "observed_ms", observed_ms)
        object.__setattr__(self, "automated", automated)

    @classmethod
    def of_record(cls, r: dict[str, Any]) -> MessageIn:
        """From ``decode_fields(..., MESSAGE_FIELDS)``."""
        sender = r["from"]
        # The class by name, arguments by position: compiled, that is a direct call, where
        # ``cls(name=...)`` went through Python's keyword parsing (10,000 instructions here).
        return MessageIn(
            r["event_id"],
            r["event_type"],
            r["inbox_id"],
            r["folder_role"],
            r["message_id"],
            r["in_reply_to"],
            r["references"],
            r["subject"],
            sender["email"] if sender else None,
            sender["name"] if sender else None,
            r["date"],
            r["internal_date"],
            r["observed_at"],
            r["automated"],
        )

    @classmethod
    def of(cls, ev: MessageEvent) -> MessageIn:
        return cls(
            event_id=ev.event_id,
            event_type=ev.event_type,
            inbox_id=ev.inbox_id,
            folder_role=ev.folder_role,
            message_id=ev.message_id,
            in_reply_to=list(ev.in_reply_to),
            references=list(ev.references),
            subject=ev.subject,
            from_email=ev.from_.email if ev.from_ else None,
            from_name=ev.from_.name if ev.from_ else None,
            date_ms=epoch_ms(ev.date),
            internal_date_ms=epoch_ms(ev.internal_date),
            observed_ms=epoch_ms(ev.observed_at) or 0,
            automated=ev.automated,
        )


@dataclass(frozen=True, slots=True)
class BodyHead:
    """Where an inbox.bodies event belongs, without its text."""

    event_id: str
    inbox_id: str
    observed_ms: int

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(self, event_id: str, inbox_id: str, observed_ms: int) -> None:
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "inbox_id", inbox_id)
        object.__setattr__(self, "observed_ms", observed_ms)

    @classmethod
    def of_record(cls, r: dict[str, Any]) -> BodyHead:
        """From ``decode_fields(..., BODY_HEAD_FIELDS)``."""
        return BodyHead(r["event_id"], r["inbox_id"], r["observed_at"])

    @classmethod
    def of(cls, ev: BodyEvent) -> BodyHead:
        return cls(ev.event_id, ev.inbox_id, epoch_ms(ev.observed_at) or 0)


def crm_of_record(r: dict[str, Any]) -> CrmRecord:
    """A ``CrmRecord`` from ``decode_fields(..., OUTBOUND_FIELDS)``."""
    return CrmRecord(
        r["kind"],
        r["inbox_id"],
        r["contact_email"],
        r["contact_name"],
        r["subject"],
        r["crm_ref"],
        r["sequence_id"],
    )


def body_of_record(r: dict[str, Any]) -> Body:
    """A ``Body`` from ``decode_fields(..., BODY_FIELDS)``."""
    return Body(
        text=r["text"],
        attachments=tuple(
            AttachmentInfo(a["filename"], a["content_type"], a["size"], a["sha256"])
            for a in r["attachments"]
        ),
    )

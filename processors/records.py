"""The processor's state records: typed, frozen, and the exact JSON each one is in a changelog.

State used to be JSON dicts reached by string keys; these records are the same fields with
names and types, and ``to_json``/``from_json`` keep the changelog format of earlier versions
byte for byte (a processor restores the state an older one committed). Bodies never appear
here: a held reply keeps the *offset* of its body in inbox.bodies, never the body.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Self

from inboxstream.processors.matcher import Match, MatchedBy, engagement_id, lifecycle_event_id
from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEventRecord,
    EngagementEventType,
    OutboundKind,
)

if TYPE_CHECKING:
    from inboxstream.processors.assign import MessageEntry
    from inboxstream.processors.inputs import MessageIn

Json = dict[str, Any]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _flat(record: Any) -> Json:
    """A flat dataclass as a dict, fields in order (``asdict`` deep-copies every value, which
    cost more than the rest of writing the state). The names come from ``fields``, once per
    class: a class compiled by mypyc has neither ``__slots__`` nor ``__dict__``."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


@dataclass(frozen=True, slots=True)
class CrmRecord:
    """A Message-ID the CRM sent or logged (the ``crm`` store, keyed by that Message-ID)."""

    kind: OutboundKind
    inbox_id: str | None
    contact_email: str | None
    contact_name: str | None
    subject: str | None
    crm_ref: str | None
    sequence_id: str | None

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        kind: OutboundKind,
        inbox_id: str | None,
        contact_email: str | None,
        contact_name: str | None,
        subject: str | None,
        crm_ref: str | None,
        sequence_id: str | None,
    ) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "inbox_id", inbox_id)
        object.__setattr__(self, "contact_email", contact_email)
        object.__setattr__(self, "contact_name", contact_name)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "crm_ref", crm_ref)
        object.__setattr__(self, "sequence_id", sequence_id)

    def to_json(self) -> Json:
        # the field order is the changelog's key order; JSON writes tuples as lists
        return _flat(self)

    @classmethod
    def from_json(cls, data: Json) -> Self:
        return cls(**data)


#: The key by which a ``pending`` record says its reply's ids are in the ``threads`` store.
REFS_IN_THREADS = "refs_in_threads"


@dataclass(frozen=True, slots=True)
class Reply:
    """What an engagement needs of a reply candidate (metadata only)."""

    inbox_id: str
    event_id: str
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str | None
    from_email: str | None
    from_name: str | None
    observed_ms: int

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        inbox_id: str,
        event_id: str,
        message_id: str,
        in_reply_to: tuple[str, ...],
        references: tuple[str, ...],
        subject: str | None,
        from_email: str | None,
        from_name: str | None,
        observed_ms: int,
    ) -> None:
        object.__setattr__(self, "inbox_id", inbox_id)
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "message_id", message_id)
        object.__setattr__(self, "in_reply_to", in_reply_to)
        object.__setattr__(self, "references", references)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "from_email", from_email)
        object.__setattr__(self, "from_name", from_name)
        object.__setattr__(self, "observed_ms", observed_ms)

    @classmethod
    def of(cls, ev: MessageIn, entry: MessageEntry) -> Reply:
        """The reply candidate ``ev``, with the ids and subject of ``entry``, its threads
        entry: ``ev``'s, capped and clipped there once."""
        # by name and position: a direct call compiled (``cls(name=...)`` parsed keywords)
        return Reply(
            ev.inbox_id,
            ev.event_id,
            ev.message_id,
            tuple(entry.in_reply_to),
            tuple(entry.references),
            entry.subject,
            ev.from_email,
            ev.from_name,
            ev.observed_ms,
        )

    def to_json(self, with_ids: bool = True) -> Json:
        """The changelog's keys in its order (JSON writes tuples as lists); without the ids,
        for a record that names its threads entry for them (``Held.to_json``). Field by
        field: ``_flat``'s ``getattr`` by name was 6,000 instructions a held reply."""
        if with_ids:
            return {
                "inbox_id": self.inbox_id,
                "event_id": self.event_id,
                "message_id": self.message_id,
                "in_reply_to": self.in_reply_to,
                "references": self.references,
                "subject": self.subject,
                "from_email": self.from_email,
                "from_name": self.from_name,
                "observed_ms": self.observed_ms,
            }
        return {
            "inbox_id": self.inbox_id,
            "event_id": self.event_id,
            "message_id": self.message_id,
            "subject": self.subject,
            "from_email": self.from_email,
            "from_name": self.from_name,
            "observed_ms": self.observed_ms,
            REFS_IN_THREADS: True,
        }

    @classmethod
    def from_json(cls, data: Json) -> Self:
        lists = {k: tuple(data[k]) for k in ("in_reply_to", "references")}
        return cls(**(data | lists))


def refs_in_threads_of(data: Json) -> bool:
    """Whether a decoded ``pending`` record needs its threads entry's ids (``Held.from_json``)."""
    reply = data.get("reply")
    return bool(reply and reply.get(REFS_IN_THREADS))


@dataclass(frozen=True, slots=True)
class Held:
    """One entry of the ``pending`` store (key ``inbox\\0event id``), held at most
    ``retention.REPLY_HOLD_MS``: a reply candidate waiting for its CRM record or its body
    (``reply`` set), or a body that came before its message (``reply`` None)."""

    since_ms: int
    reply: Reply | None = None
    match: Match | None = None
    body_at: int | None = None  # offset of the body in inbox.bodies, never the body

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        since_ms: int,
        reply: Reply | None = None,
        match: Match | None = None,
        body_at: int | None = None,
    ) -> None:
        object.__setattr__(self, "since_ms", since_ms)
        object.__setattr__(self, "reply", reply)
        object.__setattr__(self, "match", match)
        object.__setattr__(self, "body_at", body_at)

    def to_json(self, refs_in_threads: bool = False) -> Json:
        """The record; with ``refs_in_threads`` the reply's In-Reply-To and References are
        left out and named as those of the ``threads`` entry under the same key (see
        ``PartitionState.take_changes``): a reply in a long conversation carries 20 ids, and
        writing them twice per message was most of the state a long thread wrote."""
        if self.reply is None:
            return {"body_at": self.body_at, "since_ms": self.since_ms}
        match = None
        if self.match is not None:
            match = {
                "crm_message_id": self.match.crm_message_id,
                "matched_by": self.match.matched_by,
            }
        return {
            "reply": self.reply.to_json(not refs_in_threads),
            "since_ms": self.since_ms,
            "match": match,
            "body_at": self.body_at,
        }

    @classmethod
    def from_json(cls, data: Json, refs: tuple[list[str], list[str]] | None = None) -> Self:
        """The record ``to_json`` wrote; ``refs`` (In-Reply-To, References) are the threads
        entry's, for a record written with ``refs_in_threads`` (``refs_in_threads_of``)."""
        reply = data.get("reply")
        match = data.get("match")
        matched_by: MatchedBy | None = match["matched_by"] if match else None
        if reply and reply.get(REFS_IN_THREADS):
            if refs is None:
                raise ValueError("a held reply whose ids are its threads entry's, without them")
            reply = {k: v for k, v in reply.items() if k != REFS_IN_THREADS}
            reply |= {"in_reply_to": refs[0], "references": refs[1]}
        return cls(
            since_ms=int(data["since_ms"]),
            reply=Reply.from_json(reply) if reply else None,
            match=Match(match["crm_message_id"], matched_by) if match and matched_by else None,
            body_at=data.get("body_at"),
        )

    # One method a change, not ``dataclasses.replace``: it walks the fields interpreted.
    def with_body_at(self, offset: int) -> Held:
        return Held(self.since_ms, self.reply, self.match, offset)

    def with_match(self, match: Match | None) -> Held:
        return Held(self.since_ms, self.reply, match, self.body_at)


@dataclass(frozen=True, slots=True)
class EngagementRecord:
    """An emitted engagement (no body), for copies, body expiry and deletion."""

    inbox_id: str
    message_id: str
    crm_message_id: str
    crm_kind: OutboundKind
    created_ms: int
    body_expired: bool
    deleted_ms: int | None = None

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        inbox_id: str,
        message_id: str,
        crm_message_id: str,
        crm_kind: OutboundKind,
        created_ms: int,
        body_expired: bool,
        deleted_ms: int | None = None,
    ) -> None:
        object.__setattr__(self, "inbox_id", inbox_id)
        object.__setattr__(self, "message_id", message_id)
        object.__setattr__(self, "crm_message_id", crm_message_id)
        object.__setattr__(self, "crm_kind", crm_kind)
        object.__setattr__(self, "created_ms", created_ms)
        object.__setattr__(self, "body_expired", body_expired)
        object.__setattr__(self, "deleted_ms", deleted_ms)

    def to_json(self) -> Json:
        # the field order is the changelog's key order; JSON writes tuples as lists
        return _flat(self)

    @classmethod
    def from_json(cls, data: Json) -> Self:
        return cls(**data)

    def deleted_at(self, ms: int) -> EngagementRecord:
        return EngagementRecord(
            self.inbox_id,
            self.message_id,
            self.crm_message_id,
            self.crm_kind,
            self.created_ms,
            self.body_expired,
            ms,
        )

    def body_gone(self) -> EngagementRecord:
        return EngagementRecord(
            self.inbox_id,
            self.message_id,
            self.crm_message_id,
            self.crm_kind,
            self.created_ms,
            True,
            self.deleted_ms,
        )

    def lifecycle(
        self, eng_id: str, kind: EngagementEventType, at_ms: int
    ) -> EngagementEventRecord:
        """A lifecycle event (``body.expired``, ``engagement.deleted``) of this engagement."""
        return {
            "event_id": lifecycle_event_id(eng_id, kind),
            "event_type": kind,
            "engagement_id": eng_id,
            "inbox_id": self.inbox_id,
            "message_id": self.message_id,
            "thread_id": None,
            "crm_message_id": self.crm_message_id,
            "matched_by": "in_reply_to",
            "crm_kind": self.crm_kind,
            "crm_ref": None,
            "contact_email": None,
            "contact_name": None,
            "subject": None,
            "body_text": None,
            "attachments": [],
            "occurred_at": at_ms,
        }


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    filename: str | None
    content_type: str
    size: int
    sha256: str

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(self, filename: str | None, content_type: str, size: int, sha256: str) -> None:
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "sha256", sha256)


@dataclass(frozen=True, slots=True)
class Body:
    """The part of a body an engagement carries (read from inbox.bodies, never stored)."""

    text: str | None
    attachments: tuple[AttachmentInfo, ...] = ()

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(self, text: str | None, attachments: tuple[AttachmentInfo, ...] = ()) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "attachments", attachments)

    @classmethod
    def of(cls, ev: BodyEvent) -> Body:
        return cls(
            text=ev.text,
            attachments=tuple(
                AttachmentInfo(a.filename, a.content_type, a.size, a.sha256) for a in ev.attachments
            ),
        )


def build_engagement(
    *,
    reply: Reply,
    body: Body | None,
    crm: CrmRecord | None,
    match: Match,
    thread_id: str | None,
    occurred_ms: int,
) -> EngagementEventRecord:
    """``engagement.created`` from the held reply metadata, its body and the CRM record.

    The contact is the reply's sender (the person who answered); the CRM record's contact is
    the fallback when the reply has no usable From.
    """
    eng = engagement_id(reply.inbox_id, reply.message_id)
    return {
        "event_id": lifecycle_event_id(eng, "engagement.created"),
        "event_type": "engagement.created",
        "engagement_id": eng,
        "inbox_id": reply.inbox_id,
        "message_id": reply.message_id,
        "thread_id": thread_id,
        "crm_message_id": match.crm_message_id,
        "matched_by": match.matched_by,
        "crm_kind": crm.kind if crm else "sent",
        "crm_ref": crm.crm_ref if crm else None,
        "contact_email": reply.from_email or (crm.contact_email if crm else None),
        "contact_name": reply.from_name or (crm.contact_name if crm else None),
        "subject": reply.subject,
        "body_text": body.text if body else None,
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in (body.attachments if body else ())
        ],
        "occurred_at": occurred_ms,
    }

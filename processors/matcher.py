"""CRM reply matching: by references to Message-IDs the CRM sent or logged, never by subject.

A message is a reply when its In-Reply-To names a CRM Message-ID (``matched_by="in_reply_to"``)
or, failing that, any id in its References does (``"references"``, the closest one wins: the
list runs from the thread's root to the parent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from inboxstream.schemas.models import AttachmentRef, EngagementEvent

MatchedBy = Literal["in_reply_to", "references"]


@dataclass(frozen=True)
class Match:
    crm_message_id: str
    matched_by: MatchedBy


def find_match(
    message_id: str,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    is_crm: Callable[[str], bool],
) -> Match | None:
    """The CRM mail this message answers, if any. A CRM mail is not a reply to itself."""
    for mid in in_reply_to:
        if mid != message_id and is_crm(mid):
            return Match(mid, "in_reply_to")
    for mid in reversed(references):
        if mid != message_id and is_crm(mid):
            return Match(mid, "references")
    return None


def engagement_id(inbox_id: str, reply_message_id: str) -> str:
    """Stable: the same reply (in any folder, in any replay) is the same engagement."""
    return hashlib.sha256(f"engagement\0{inbox_id}\0{reply_message_id}".encode()).hexdigest()[:32]


def lifecycle_event_id(eng_id: str, event_type: str) -> str:
    return hashlib.sha256(f"{eng_id}\0{event_type}".encode()).hexdigest()[:32]


def build_engagement(
    *,
    inbox_id: str,
    reply: dict[str, Any],
    body: dict[str, Any] | None,
    crm: dict[str, Any],
    match: Match,
    thread_id: str | None,
    occurred_at: datetime,
) -> EngagementEvent:
    """``engagement.created`` from the held reply metadata, its body and the CRM record.

    The contact is the reply's sender (the person who answered); the CRM record's contact is
    the fallback when the reply has no usable From.
    """
    eng = engagement_id(inbox_id, reply["message_id"])
    attachments = [AttachmentRef(**a) for a in (body or {}).get("attachments", [])]
    return EngagementEvent(
        event_id=lifecycle_event_id(eng, "engagement.created"),
        event_type="engagement.created",
        engagement_id=eng,
        inbox_id=inbox_id,
        message_id=reply["message_id"],
        thread_id=thread_id,
        crm_message_id=match.crm_message_id,
        matched_by=match.matched_by,
        crm_kind=crm.get("kind", "sent"),
        crm_ref=crm.get("crm_ref"),
        contact_email=reply.get("from_email") or crm.get("contact_email"),
        contact_name=reply.get("from_name") or crm.get("contact_name"),
        subject=reply.get("subject"),
        body_text=(body or {}).get("text"),
        attachments=attachments,
        occurred_at=occurred_at,
    )

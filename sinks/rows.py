"""Event → ClickHouse row mappings. Pure, so they are unit-tested without a database."""

from __future__ import annotations

from typing import Any

from schemas.models import MessageEvent


def _millis(event: MessageEvent) -> int:
    return int(event.observed_at.timestamp() * 1000)


def metadata_row(event: MessageEvent) -> dict[str, Any]:
    """One ``email_metadata`` row. ``received_at`` is the server's date when it has one, so
    the 60-day clock starts when the mail arrived, not when we happened to sync it."""
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "inbox_id": event.inbox_id,
        "folder": event.folder,
        "folder_role": event.folder_role,
        "uidvalidity": event.uidvalidity,
        "uid": event.uid,
        "modseq": event.modseq,
        "message_id": event.message_id,
        "message_id_synthetic": event.message_id_synthetic,
        "in_reply_to": event.in_reply_to,
        "references": event.references,
        "subject": event.subject or "",
        "from_email": event.from_.email if event.from_ else "",
        "from_name": (event.from_.name or "") if event.from_ else "",
        "to_emails": [a.email for a in event.to],
        "cc_emails": [a.email for a in event.cc],
        "date": event.date,
        "internal_date": event.internal_date,
        "received_at": event.internal_date or event.date or event.observed_at,
        "size": event.size,
        "flags": event.flags,
        "has_attachments": event.has_attachments,
        "raw_headers": event.raw_headers.decode("utf-8", "replace"),
        "parse_error": event.parse_error,
        "observed_at": event.observed_at,
        "version": _millis(event),
    }

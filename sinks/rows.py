"""Event record → ClickHouse row mappings. Pure, so they are unit-tested without a database.

Each mapper reads an event as its Avro record (``AvroSerde.decode_record``: the newest
schema's field names, nested records as dicts, timestamps as UTC datetimes), so the sink maps
straight from the decoder with no model validation of what the schema already guarantees.
A model maps the same through ``record_of`` (its ``model_dump(by_alias=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from inboxstream.schemas.models import Event

Record = Mapping[str, Any]


def record_of(event: Event) -> dict[str, Any]:
    """A model as the record the sink decodes (the same dict the Avro reader gives)."""
    return event.model_dump(by_alias=True)


def _ms(value: datetime) -> int:
    """Epoch milliseconds, exactly: ``int(value.timestamp() * 1000)`` goes through a float and
    can land a millisecond low (2004-02-01 00:00:00.001 gave ...000), which let a later
    lifecycle event carry the same version as the one before it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MILLISECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _attachment_columns(attachments: Sequence[Record]) -> dict[str, Any]:
    """The parallel attachment arrays that ``bodies`` and ``engagements`` both carry."""
    return {
        "attachment_filenames": [a["filename"] or "" for a in attachments],
        "attachment_content_types": [a["content_type"] for a in attachments],
        "attachment_sizes": [a["size"] for a in attachments],
        "attachment_sha256": [a["sha256"] for a in attachments],
    }


def metadata_row(event: Record) -> dict[str, Any]:
    """One ``email_metadata`` row. ``received_at`` is the server's date when it has one, so
    the 60-day clock starts when the mail arrived, not when we happened to sync it."""
    sender = event["from"]
    return {
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "inbox_id": event["inbox_id"],
        "folder": event["folder"],
        "folder_role": event["folder_role"],
        "uidvalidity": event["uidvalidity"],
        "uid": event["uid"],
        "modseq": event["modseq"],
        "message_id": event["message_id"],
        "message_id_synthetic": event["message_id_synthetic"],
        "in_reply_to": event["in_reply_to"],
        "references": event["references"],
        "subject": event["subject"] or "",
        "from_email": sender["email"] if sender else "",
        "from_name": (sender["name"] or "") if sender else "",
        "to_emails": [a["email"] for a in event["to"]],
        "cc_emails": [a["email"] for a in event["cc"]],
        "date": event["date"],
        "internal_date": event["internal_date"],
        "received_at": event["internal_date"] or event["date"] or event["observed_at"],
        "size": event["size"],
        "flags": event["flags"],
        "has_attachments": event["has_attachments"],
        "raw_headers": event["raw_headers"].decode("utf-8", "replace"),
        "parse_error": event["parse_error"],
        "observed_at": event["observed_at"],
        "version": _ms(event["observed_at"]),
    }


def body_row(event: Record) -> dict[str, Any]:
    """One ``bodies`` row; the 7-day clock starts at the server's date, like metadata."""
    return {
        "event_id": event["event_id"],
        "inbox_id": event["inbox_id"],
        "folder": event["folder"],
        "uidvalidity": event["uidvalidity"],
        "uid": event["uid"],
        "message_id": event["message_id"],
        "text": event["text"],
        "html": event["html"],
        **_attachment_columns(event["attachments"]),
        "attachments_logged": event["attachments_logged"],
        "attachments_skipped_reason": event["attachments_skipped_reason"],
        "size": event["size"],
        "date": event["date"],
        "internal_date": event["internal_date"],
        "received_at": event["internal_date"] or event["date"] or event["observed_at"],
        "parse_error": event["parse_error"],
        "observed_at": event["observed_at"],
        "version": _ms(event["observed_at"]),
    }


def status_row(event: Record) -> dict[str, Any]:
    return {
        "event_id": event["event_id"],
        "inbox_id": event["inbox_id"],
        "state": event["state"],
        "reason": event["reason"] or "",
        "error_kind": event["error_kind"] or "",
        "retriable": event["retriable"],
        "folder": event["folder"] or "",
        "progress_done": event["progress_done"],
        "progress_total": event["progress_total"],
        "server": event["server"] or "",
        "at": event["at"],
        "version": _ms(event["at"]),
    }


def thread_row(event: Record) -> dict[str, Any]:
    return {
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "inbox_id": event["inbox_id"],
        "message_event_id": event["message_event_id"] or "",
        "message_id": event["message_id"] or "",
        "thread_id": event["thread_id"],
        "merged_thread_ids": event["merged_thread_ids"],
        "root_message_id": event["root_message_id"] or "",
        "base_subject": event["base_subject"] or "",
        "algorithm": event["algorithm"],
        "occurred_at": event["occurred_at"],
        "version": _ms(event["occurred_at"]),
    }


def engagement_row(event: Record) -> dict[str, Any]:
    """One ``engagements`` event-log row (created, deleted or body.expired)."""
    return {
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "engagement_id": event["engagement_id"],
        "inbox_id": event["inbox_id"],
        "message_id": event["message_id"],
        "thread_id": event["thread_id"] or "",
        "crm_message_id": event["crm_message_id"],
        "matched_by": event["matched_by"],
        "crm_kind": event["crm_kind"],
        "crm_ref": event["crm_ref"] or "",
        "contact_email": event["contact_email"] or "",
        "contact_name": event["contact_name"] or "",
        "subject": event["subject"] or "",
        "body_text": event["body_text"],
        **_attachment_columns(event["attachments"]),
        "occurred_at": event["occurred_at"],
        "version": _ms(event["occurred_at"]),
    }


def outbound_row(event: Record) -> dict[str, Any]:
    return {
        "event_id": event["event_id"],
        "message_id": event["message_id"],
        "kind": event["kind"],
        "inbox_id": event["inbox_id"] or "",
        "contact_email": event["contact_email"] or "",
        "contact_name": event["contact_name"] or "",
        "subject": event["subject"] or "",
        "sequence_id": event["sequence_id"] or "",
        "crm_ref": event["crm_ref"] or "",
        "sent_at": event["sent_at"],
        "version": _ms(event["sent_at"]),
    }

"""One event of every kind with every field worth exercising set (a non-ASCII subject, raw
header bytes, nested records), for the serde and codec tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from inboxstream.schemas.models import (
    Address,
    Attachment,
    AttachmentRef,
    BodyEvent,
    CheckpointEvent,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
    StatusEvent,
    ThreadEvent,
)

NOW = datetime(2026, 11, 22, 10, 30, 15, 123000, tzinfo=UTC)


def sample_message(**kw: Any) -> MessageEvent:
    base: dict[str, Any] = dict(
        event_id="e1",
        inbox_id="alice@example.com",
        folder="INBOX",
        folder_role="inbox",
        uidvalidity=7,
        uid=42,
        modseq=1234,
        message_id="abc@example.com",
        in_reply_to=["p@example.com"],
        references=["r@example.com", "p@example.com"],
        subject="Grüße 👋",
        from_=Address(name="Bob", email="bob@example.com"),
        to=[Address(email="alice@example.com")],
        date=NOW,
        internal_date=NOW,
        size=2048,
        flags=["\\Seen"],
        has_attachments=True,
        raw_headers=b"Subject: x\r\n\xff",
        observed_at=NOW,
    )
    base.update(kw)
    return MessageEvent(**base)


def body_event(n: int, text: str, *, inbox: str, message_id: str, at: datetime) -> BodyEvent:
    """The body of message ``n`` (event id ``e<n>``, INBOX, uid ``n``) as the producer sends it."""
    return BodyEvent(
        event_id=f"e{n}",
        inbox_id=inbox,
        folder="INBOX",
        uidvalidity=1,
        uid=n,
        message_id=message_id,
        text=text,
        size=len(text),
        observed_at=at,
    )


SAMPLES: list[Event] = [
    sample_message(),
    BodyEvent(
        event_id="e1",
        inbox_id="i",
        folder="INBOX",
        uidvalidity=1,
        uid=2,
        message_id="m@x",
        text="hello",
        html="<p>hello</p>",
        attachments=[
            Attachment(filename="a.pdf", content_type="application/pdf", size=3, sha256="00" * 32)
        ],
        size=100,
        observed_at=NOW,
    ),
    StatusEvent(
        event_id="s1",
        inbox_id="i",
        state="disconnected",
        reason="auth failed",
        error_kind="auth",
        retriable=False,
        at=NOW,
    ),
    OutboundEvent(event_id="o1", message_id="m@x", kind="sent", contact_email="c@x", sent_at=NOW),
    ThreadEvent(
        event_id="t1",
        event_type="thread.merged",
        inbox_id="i",
        thread_id="th1",
        merged_thread_ids=["th2"],
        occurred_at=NOW,
    ),
    EngagementEvent(
        event_id="g1",
        engagement_id="eg1",
        inbox_id="i",
        message_id="r@x",
        crm_message_id="m@x",
        matched_by="references",
        body_text="thanks",
        attachments=[AttachmentRef(content_type="text/csv", size=1, sha256="ab" * 32)],
        occurred_at=NOW,
    ),
    CheckpointEvent(
        inbox_id="i", folder="INBOX", uidvalidity=7, last_uid=42, highestmodseq=99, updated_at=NOW
    ),
]

"""CRM reply matching (references only) and event-time retention decisions."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.core.contracts import DAY_MS
from inboxstream.processors.matcher import (
    Match,
    engagement_id,
    find_match,
    lifecycle_event_id,
)
from inboxstream.processors.records import (
    AttachmentInfo,
    Body,
    CrmRecord,
    Reply,
    build_engagement,
)
from inboxstream.processors.retention import BODY_TTL_MS, REPLY_HOLD_MS, expired
from inboxstream.schemas.models import EngagementEvent

CRM = {"crm@x", "crm2@x"}


def test_in_reply_to_wins_over_references() -> None:
    got = find_match("r@x", ["crm@x"], ["crm2@x", "other@x"], CRM)
    assert got == Match("crm@x", "in_reply_to")


def test_closest_reference_wins() -> None:
    got = find_match("r@x", ["other@x"], ["crm@x", "crm2@x", "other@x"], CRM)
    assert got == Match("crm2@x", "references")


def test_no_reference_no_match_and_not_a_reply_to_itself() -> None:
    assert find_match("r@x", [], [], CRM) is None
    assert find_match("crm@x", ["crm@x"], ["crm@x"], CRM) is None


@given(st.lists(st.sampled_from(["a@x", "b@x", "crm@x", "crm2@x"]), max_size=6))
def test_match_only_when_a_crm_id_is_referenced(refs: list[str]) -> None:
    got = find_match("r@x", [], refs, CRM)
    assert (got is not None) == bool(CRM & set(refs))
    if got:
        assert got.crm_message_id in refs and got.matched_by == "references"


def test_engagement_fields_and_stable_ids() -> None:
    reply = Reply("i", "e", "r@x", (), ("crm@x",), "Re: q", None, None, 0)
    crm = CrmRecord("sequence", None, "c@x", "C", None, "deal", None)
    body = Body("hello", (AttachmentInfo("a.pdf", "application/pdf", 3, "00"),))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    record = build_engagement(
        reply=reply,
        body=body,
        crm=crm,
        match=Match("crm@x", "references"),
        thread_id="t",
        occurred_ms=int(when.timestamp() * 1000),
    )
    # the record is the event's Avro record: the model takes it as it is, the time aside
    ev = EngagementEvent.model_validate({**record, "occurred_at": when})
    assert ev.engagement_id == engagement_id("i", "r@x")
    assert ev.event_id == lifecycle_event_id(ev.engagement_id, "engagement.created")
    assert (ev.contact_email, ev.contact_name) == ("c@x", "C")  # reply has no From: CRM's
    assert ev.crm_kind == "sequence" and ev.body_text == "hello"
    assert [a.filename for a in ev.attachments] == ["a.pdf"]
    assert engagement_id("i", "r@x") != engagement_id("j", "r@x")


def test_retention_windows() -> None:
    assert not expired(0, REPLY_HOLD_MS - 1, REPLY_HOLD_MS)
    assert expired(0, REPLY_HOLD_MS, REPLY_HOLD_MS)
    assert BODY_TTL_MS == 7 * DAY_MS and REPLY_HOLD_MS < BODY_TTL_MS

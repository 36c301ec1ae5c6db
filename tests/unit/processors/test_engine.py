"""The pure processor engine, driven directly: no Kafka, event time only.

A tiny in-memory driver stands in for processors.processor: it numbers records per topic as
offsets, resolves ``BodyRead`` from the bodies it was given, and replays the state's changes
into a fresh state after every step (what a restore after a crash would see).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.matcher import engagement_id
from inboxstream.processors.retention import BODY_TTL_MS, DELETED_PURGE_MS, METADATA_TTL_MS
from inboxstream.processors.state import PartitionState
from inboxstream.schemas.models import (
    Address,
    BodyEvent,
    EngagementEvent,
    MessageEvent,
    OutboundEvent,
)
from tests.helpers.engine import Harness
from tests.helpers.samples import body_event

T0 = datetime(2026, 3, 1, tzinfo=UTC)
INBOX = "owner@example.com"


def message(
    n: int,
    *,
    mid: str | None = None,
    reply_to: str | None = None,
    at: datetime = T0,
    folder_role: str = "inbox",
    subject: str = "Quote",
    automated: str | None = None,
) -> MessageEvent:
    return MessageEvent(
        event_id=f"e{n}",
        inbox_id=INBOX,
        folder="INBOX" if folder_role == "inbox" else "Sent",
        folder_role=folder_role,  # type: ignore[arg-type]
        uidvalidity=1,
        uid=n,
        message_id=mid or f"m{n}@example.com",
        in_reply_to=[reply_to] if reply_to else [],
        references=[reply_to] if reply_to else [],
        subject=f"Re: {subject}" if reply_to else subject,
        **{"from": Address(name="Cleo", email="cleo@customer.test")},
        size=100,
        raw_headers=b"",
        observed_at=at,
        automated=automated,
    )


def body_of(n: int, text: str, at: datetime = T0) -> BodyEvent:
    return body_event(n, text, inbox=INBOX, message_id=f"m{n}@example.com", at=at)


def crm(mid: str, at: datetime = T0) -> OutboundEvent:
    return OutboundEvent(
        event_id=f"crm-{mid}", message_id=mid, inbox_id=INBOX, crm_ref="deal-1", sent_at=at
    )


def delete(eng_id: str, at: datetime) -> EngagementEvent:
    return EngagementEvent(
        event_id=f"del-{eng_id}",
        event_type="engagement.deleted",
        engagement_id=eng_id,
        inbox_id=INBOX,
        message_id="-",
        crm_message_id="-",
        occurred_at=at,
    )


def test_messages_are_threaded_once_and_duplicates_ignored() -> None:
    h = Harness()
    first = h.feed(message(1))
    reply = h.feed(message(2, reply_to="m1@example.com"))
    again = h.feed(message(2, reply_to="m1@example.com"))
    assert [e.event.event_type for e in first + reply] == ["thread.assigned"] * 2
    assert first[0].event.thread_id == reply[0].event.thread_id  # type: ignore[union-attr]
    assert again == [] and h.engine.counts["messages_duplicate"] == 1


def test_reply_to_crm_mail_with_its_body_becomes_one_engagement() -> None:
    h = Harness()
    h.feed(crm("m1@example.com"))
    h.feed(message(2, reply_to="m1@example.com"))
    [created] = [e for e in h.feed(body_of(2, "yes please")) if e.output == "engagements"]
    ev = created.event
    assert isinstance(ev, EngagementEvent)
    assert (ev.event_type, ev.matched_by, ev.body_text) == (
        "engagement.created",
        "in_reply_to",
        "yes please",
    )
    assert (ev.contact_email, ev.crm_ref) == ("cleo@customer.test", "deal-1")
    assert ev.engagement_id == engagement_id(INBOX, "m2@example.com")
    assert h.reads == 0  # the body was at hand: nothing read back


def test_reply_before_its_crm_record_reads_the_body_back_then() -> None:
    h = Harness()
    h.feed(message(2, reply_to="m1@example.com"))
    assert h.feed(body_of(2, "later text")) == []  # no CRM record yet: only its offset is kept
    held = h.state.pending[f"{INBOX}\x00e2"]
    assert held.body_at == 0 and held.match is None
    [created] = h.feed(crm("m1@example.com"))
    assert h.reads == 1 and created.event.body_text == "later text"  # type: ignore[union-attr]
    assert not h.state.pending and not h.state.engagements[created.event.engagement_id].body_expired  # type: ignore[union-attr]


def test_a_body_gone_from_kafka_gives_an_engagement_without_body() -> None:
    h = Harness()
    h.feed(message(2, reply_to="m1@example.com"))
    h.feed(body_of(2, "text"))
    h.bodies.clear()  # retention took it
    [created] = h.feed(crm("m1@example.com"))
    ev = created.event
    assert isinstance(ev, EngagementEvent) and ev.body_text is None
    assert h.state.engagements[ev.engagement_id].body_expired
    assert h.engine.counts["bodies_unavailable"] == 1


def test_body_before_its_message_is_held_as_an_offset() -> None:
    h = Harness()
    h.feed(crm("m1@example.com"))
    assert h.feed(body_of(2, "early")) == []
    assert h.state.pending[f"{INBOX}\x00e2"].reply is None
    emitted = h.feed(message(2, reply_to="m1@example.com"))
    assert [e.event.event_type for e in emitted] == ["thread.assigned", "engagement.created"]
    assert emitted[1].event.body_text == "early" and h.reads == 1  # type: ignore[union-attr]


def test_sent_folder_mail_and_unrelated_mail_are_no_engagements() -> None:
    h = Harness()
    h.feed(crm("m1@example.com"))
    h.feed(message(2, reply_to="m1@example.com", folder_role="sent"))
    h.feed(body_of(2, "my own follow-up"))
    h.feed(message(3))
    h.feed(body_of(3, "unrelated"))
    assert h.types() == [] and not h.state.pending
    assert h.engine.counts["bodies_dropped"] == 2


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["auto_reply", "bounce", "auto_generated", "bulk"]),
    crm_first=st.booleans(),
)
def test_automated_answers_to_crm_mail_are_threaded_never_engagements(
    kind: str, crm_first: bool
) -> None:
    """An out-of-office answer or a bounce refers to the CRM mail like a reply: it joins the
    thread, is counted, and never becomes an engagement, whichever of its events comes first;
    a real reply next to it still does."""
    h = Harness()
    if crm_first:
        h.feed(crm("m1@example.com"))
    h.feed(message(1, folder_role="sent"))
    auto = h.feed(message(2, reply_to="m1@example.com", automated=kind))
    h.feed(body_of(2, "I am away"))
    real = h.feed(message(3, reply_to="m1@example.com"))
    h.feed(body_of(3, "yes"))
    if not crm_first:
        h.feed(crm("m1@example.com"))
    assert [e.event.event_type for e in auto] == ["thread.assigned"]
    assert auto[0].event.thread_id == real[0].event.thread_id  # type: ignore[union-attr]
    engagements = [e for e in h.out if e.output == "engagements"]
    assert [e.event.message_id for e in engagements] == ["m3@example.com"]  # type: ignore[union-attr]
    assert f"{INBOX}\x00e2" not in h.state.pending  # its body is not even held
    assert h.engine.counts[f"automated_not_reply:{kind}"] == 1


def test_retention_over_ninety_days_of_event_time() -> None:
    h = Harness()
    h.feed(crm("m1@example.com"))
    h.feed(message(1, mid="m1@example.com"))
    h.feed(message(2, reply_to="m1@example.com"))
    h.feed(body_of(2, "reply"))
    h.feed(message(3, reply_to="nobody@example.com"))  # a candidate that never matches
    eng = engagement_id(INBOX, "m2@example.com")

    day = timedelta(days=1)
    h.feed(message(10, at=T0 + 2 * day))  # > 24 h: the unmatched candidate is let go
    assert f"{INBOX}\x00e3" not in h.state.pending and h.engine.counts["pending_expired"] == 1
    h.feed(message(11, at=T0 + timedelta(milliseconds=BODY_TTL_MS)))
    assert h.types() == ["engagement.created", "body.expired"]
    h.feed(delete(eng, T0 + 9 * day))
    assert h.types()[-1] == "engagement.deleted" and h.state.engagements[eng].deleted_ms
    h.feed(delete(eng, T0 + 9 * day))  # repeated: nothing new
    assert h.types().count("engagement.deleted") == 1
    h.feed(message(12, at=T0 + timedelta(milliseconds=METADATA_TTL_MS)))
    assert {"e1", "e2", "e3"}.isdisjoint(h.state.inbox(INBOX).entries)  # metadata aged out
    assert eng in h.state.engagements  # deleted, but inside the 90-day purge window
    h.feed(message(13, at=T0 + 9 * day + timedelta(milliseconds=DELETED_PURGE_MS)))
    assert eng not in h.state.engagements
    assert h.types() == ["engagement.created", "body.expired", "engagement.deleted"]


def test_a_late_body_past_seven_days_is_dropped() -> None:
    h = Harness()
    h.feed(message(1, at=T0 + timedelta(days=8)))
    assert h.feed(body_of(1, "old", at=T0)) == []
    assert h.engine.counts["bodies_too_old"] == 1


def test_changes_restore_to_the_same_state() -> None:
    """What the driver writes to the changelogs is enough to rebuild the state."""
    h = Harness()
    for event in (
        crm("m1@example.com"),
        message(1, mid="m1@example.com"),
        message(2, reply_to="m1@example.com"),
        message(3, reply_to="m9@example.com"),
        body_of(3, "held"),
        body_of(4, "early"),
        body_of(2, "text"),
    ):
        h.feed(event)
    restored = PartitionState(0)
    for (store, key), value in h.changelog.items():
        restored.apply(store, key, value)
    assert restored.crm == h.state.crm and restored.pending == h.state.pending
    assert restored.engagements == h.state.engagements and len(restored.pending) == 2
    assert restored.watermark_ms == h.state.watermark_ms
    got = {e: x.thread_id for e, x in restored.inbox(INBOX).entries.items()}
    assert got == {e: x.thread_id for e, x in h.state.inbox(INBOX).entries.items()}
    assert restored.pending_mentioning("m9@example.com") == [f"{INBOX}\x00e3"]


ORDERS = list(itertools.permutations(["message", "body", "crm"]))


@settings(max_examples=60, deadline=None)
@given(
    order=st.sampled_from(ORDERS),
    copies=st.lists(st.sampled_from(["message", "body", "crm"]), max_size=3),
    sent_first=st.booleans(),
)
def test_any_arrival_order_gives_exactly_one_engagement_with_the_body(
    order: tuple[str, ...], copies: list[str], sent_first: bool
) -> None:
    """Two topics and a CRM feed with no order between them, redelivered copies included:
    the reply becomes exactly one engagement, with its body, whatever comes first."""
    h = Harness()
    if sent_first:
        h.feed(message(1, mid="m1@example.com", folder_role="sent"))
    make = {
        "message": lambda: message(2, reply_to="m1@example.com"),
        "body": lambda: body_of(2, "the answer"),
        "crm": lambda: crm("m1@example.com"),
    }
    for name in [*order, *copies]:
        h.feed(make[name]())
    created = [e.event for e in h.out if e.event.event_type == "engagement.created"]
    assert len(created) == 1
    assert created[0].body_text == "the answer"  # type: ignore[union-attr]
    assert not h.state.pending


def test_a_restored_state_sweeps_what_the_original_sweeps() -> None:
    """The sweep looks only at what is due (heaps kept beside the stores); a state rebuilt
    from the changelogs must find the same held replies and engagements due."""
    h = Harness()
    for event in (
        crm("m1@example.com"),
        message(1, mid="m1@example.com"),
        message(2, reply_to="m1@example.com"),
        body_of(2, "text"),
        message(3, reply_to="m9@example.com"),  # held, never matched: expires
        message(4, reply_to="m1@example.com", at=T0 + timedelta(days=1)),  # matched, no body
    ):
        h.feed(event)
    restored = Harness(state=PartitionState(0))
    for (store, key), value in h.changelog.items():
        restored.state.apply(store, key, value)
    late = message(5, at=T0 + timedelta(days=30))
    swept = h.feed(late)
    assert [e.event for e in restored.feed(late)] == [e.event for e in swept]
    # message 4's match logged without a body; message 2's engagement loses its body (7 days)
    assert [e.event.event_type for e in swept] == [
        "thread.assigned",
        "engagement.created",
        "body.expired",
    ]
    assert not h.state.pending and not restored.state.pending
    assert h.engine.counts["pending_expired"] == 1

"""The processor against real Kafka: threads, merges, CRM replies, bodies kept out, poison."""

from __future__ import annotations

from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import EngagementEvent, ThreadEvent
from tests.helpers.mailboxes import tricky_mailbox
from tests.helpers.pipeline import (
    events_for,
    outbound,
    publish,
    publish_inbox,
    read_all,
    reply_raw,
)


async def test_threads_merges_and_crm_replies(settings: Settings, unique: str) -> None:
    inbox = f"owner-{unique}@inboxstream.test"
    mails, rfc, _ = tricky_mailbox()
    pairs = events_for(inbox, [m.raw for m in mails])
    crm_id = f"crm-{unique}@crm.test"
    logged_id = f"logged-{unique}@mailer.test"
    replies = events_for(
        inbox,
        [
            reply_raw(f"r1-{unique}@x", crm_id, f"<{crm_id}>", "Re: Offer", "Yes please"),
            reply_raw(f"r2-{unique}@x", None, f"<{crm_id}> <r1-{unique}@x>", "Re: Offer", "More"),
            reply_raw(f"r3-{unique}@x", "other@x", "<other@x>", "Re: Offer", "SECRET-NOT-CRM"),
            # two conversations, then a message that references both: a merge
            reply_raw(f"x1-{unique}@x", None, None, "Alpha", "a"),
            reply_raw(f"y1-{unique}@x", None, None, "Beta", "b"),
            reply_raw(f"z1-{unique}@x", None, f"<x1-{unique}@x> <y1-{unique}@x>", "Re: both", "z"),
            # a reply to mail that was BCC-logged to the CRM for no particular inbox
            reply_raw(f"r4-{unique}@x", logged_id, f"<{logged_id}>", "Re: Logged", "Logged reply"),
        ],
        start_uid=100,
    )
    t = settings.topics
    # the CRM record of r1/r2 arrives *after* the replies (held, then matched)
    await publish_inbox(settings, pairs + replies)
    await publish(settings, [(t.crm_outbound.name, crm_id, outbound(crm_id, inbox))])
    logged = outbound(logged_id, None).model_copy(update={"kind": "logged"})
    await publish(settings, [(t.crm_outbound.name, logged_id, logged)])  # broadcast
    # a record that is not Avro at all: dead-lettered, processing goes on
    producer_items = [(t.messages.name, inbox, b"\x00garbage")]
    from inboxstream.core.kafka import make_producer

    p = make_producer(settings.kafka)
    await p.start()
    await p.send_and_wait(producer_items[0][0], producer_items[0][2], key=inbox.encode())
    await p.stop()

    config = ProcessorConfig(group_id=f"proc-{unique}")
    stats = await run_processor(settings, config, until_end=True)
    assert stats.dead_lettered == 1

    topics = ProcessorTopics.build(settings.topics)
    threads = await read_all(settings, topics.threads, ThreadEvent)
    latest: dict[str, str] = {}
    for ev in threads:
        if ev.event_type == "thread.assigned":
            assert ev.message_event_id is not None
            latest[ev.message_event_id] = ev.thread_id
    label = {m.event_id: mails[i].label for i, (m, _) in enumerate(pairs)}
    groups: dict[str, set[str]] = {}
    for eid, tid in latest.items():
        if eid in label:
            groups.setdefault(tid, set()).add(label[eid])
    assert {frozenset(g) for g in groups.values()} == {frozenset(g) for g in rfc}

    by_mid = {ev.message_id: ev.thread_id for ev in threads if ev.event_type == "thread.assigned"}
    merges = [ev for ev in threads if ev.event_type == "thread.merged"]
    # Beta's thread folds into Alpha's (the earlier one); Beta's message is re-assigned
    assert [(m.thread_id, m.merged_thread_ids) for m in merges] == [
        (by_mid[f"x1-{unique}@x"], [threads_of(threads, f"y1-{unique}@x")[0]])
    ]
    y_history = threads_of(threads, f"y1-{unique}@x")
    assert len(y_history) == 2 and y_history[1] == by_mid[f"x1-{unique}@x"] != y_history[0]
    assert by_mid[f"z1-{unique}@x"] == by_mid[f"x1-{unique}@x"]

    engagements = await read_all(settings, topics.engagements, EngagementEvent)
    created = {e.message_id: e for e in engagements if e.event_type == "engagement.created"}
    assert set(created) == {f"r1-{unique}@x", f"r2-{unique}@x", f"r4-{unique}@x"}
    r4 = created[f"r4-{unique}@x"]
    assert (r4.crm_kind, r4.crm_message_id) == ("logged", logged_id)
    assert r4.body_text and r4.body_text.strip() == "Logged reply"
    r1, r2 = created[f"r1-{unique}@x"], created[f"r2-{unique}@x"]
    assert (r1.matched_by, r2.matched_by) == ("in_reply_to", "references")
    assert r1.body_text and "Yes please" in r1.body_text
    assert r1.contact_email == "carla@example.test" and r1.crm_ref == "deal-1"
    assert r1.thread_id == r2.thread_id == latest[replies[0][0].event_id]
    # the non-CRM reply's body is in no output and no state
    from inboxstream.processors.state import restore

    states = await restore(settings.kafka, topics.changelogs, range(settings.topics.partitions))
    assert all("SECRET-NOT-CRM" not in repr(s) for s in states.values())
    assert "SECRET-NOT-CRM" not in repr(engagements)


def threads_of(events: list[ThreadEvent], message_id: str) -> list[str]:
    """Every thread id a message was assigned to, in order."""
    return [
        e.thread_id
        for e in events
        if e.event_type == "thread.assigned" and e.message_id == message_id
    ]

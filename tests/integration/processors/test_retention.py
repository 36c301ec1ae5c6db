"""Retention in event time, across restarts (each phase is a new run restoring its state):
held replies expire after the hold window, a delete starts the 90-day clock, bodies expire
after 7 days, metadata after 60; poison records are dead-lettered with the reason."""

from __future__ import annotations

from datetime import timedelta

from inboxstream.core.kafka import DLQ_PREFIX, make_producer
from inboxstream.core.settings import Settings
from inboxstream.processors.matcher import engagement_id
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.processors.state import restore
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import EngagementEvent
from tests.helpers.pipeline import (
    T0,
    events_for,
    outbound,
    publish,
    publish_inbox,
    read_all,
    read_records,
    reply_raw,
)


async def test_event_time_retention_and_deletes(settings: Settings, unique: str) -> None:
    inbox = f"ret-{unique}@inboxstream.test"
    topics = ProcessorTopics.build(settings.topics)
    config = ProcessorConfig(group_id=f"ret-{unique}")
    crm1, crm3 = f"crm1-{unique}@crm", f"crm3-{unique}@crm"

    async def run() -> None:
        await run_processor(settings, config, until_end=True)

    async def at(day: float, label: str, raw: bytes, uid: int) -> None:
        await publish_inbox(
            settings, events_for(inbox, [raw], start_uid=uid, observed=T0 + timedelta(days=day))
        )

    async def engagements() -> list[EngagementEvent]:
        return await read_all(settings, topics.engagements, EngagementEvent)

    async def state_of() -> dict[str, object]:
        states = await restore(settings.kafka, topics.changelogs, range(settings.topics.partitions))
        return {
            "pending": sum(len(s.pending) for s in states.values()),
            "engagements": {k for s in states.values() for k in s.engagements},
            "messages": sum(len(i) for s in states.values() for i in s.threads.values()),
            "text": repr(list(states.values())),
        }

    # phase 1 (day 0): CRM mail, two replies to it, a private reply, a reply to CRM mail whose
    # crm.outbound record will come too late
    await publish(settings, [(settings.topics.crm_outbound.name, crm1, outbound(crm1, inbox))])
    await at(0, "r1", reply_raw(f"r1-{unique}@x", crm1, None, "Re: Offer", "R1-TEXT"), 1)
    await at(0, "r2", reply_raw(f"r2-{unique}@x", crm1, None, "Re: Offer", "R2-TEXT"), 2)
    await at(0, "p1", reply_raw(f"p1-{unique}@x", "x@x", None, "Re: hi", "PRIVATE-TEXT"), 3)
    await at(0, "r3", reply_raw(f"r3-{unique}@x", crm3, None, "Re: Late", "R3-TEXT"), 4)
    # and a poison record on crm.outbound
    producer = make_producer(settings.kafka)
    await producer.start()
    await producer.send_and_wait(
        settings.topics.crm_outbound.name, b"not avro", key=b"k", headers=[("trace", b"t-1")]
    )
    await producer.stop()
    await run()
    created = {e.message_id for e in await engagements()}
    assert created == {f"r1-{unique}@x", f"r2-{unique}@x"}
    state = await state_of()
    assert state["pending"] == 2  # p1 and r3 held (metadata + body offset only)
    assert "PRIVATE-TEXT" not in str(state["text"]) and "R3-TEXT" not in str(state["text"])

    dead = await read_all_raw(settings, settings.topics.dead_letter.name)
    assert len(dead) == 1
    value, headers = dead[0]
    assert value == b"not avro"
    assert headers["trace"] == b"t-1"
    assert headers[DLQ_PREFIX + "topic"] == settings.topics.crm_outbound.name.encode()
    assert headers[DLQ_PREFIX + "stage"] == b"decode"
    assert headers[DLQ_PREFIX + "exception.class.name"] == b"DecodeError"
    assert DLQ_PREFIX + "offset" in headers and DLQ_PREFIX + "partition" in headers

    # phase 2 (day 2): the hold window (24 h) is over; the late CRM record matches nothing
    await at(2, "m2", reply_raw(f"m2-{unique}@x", None, None, "news", "n"), 5)
    await run()
    assert (await state_of())["pending"] == 0
    await publish(settings, [(settings.topics.crm_outbound.name, crm3, outbound(crm3, inbox))])
    await run()
    assert {e.message_id for e in await engagements()} == created

    # phase 3 (day 3): the CRM deletes r1's engagement
    r1 = engagement_id(inbox, f"r1-{unique}@x")
    delete = EngagementEvent(
        event_id=f"del-{unique}",
        event_type="engagement.deleted",
        engagement_id=r1,
        inbox_id=inbox,
        message_id=f"r1-{unique}@x",
        crm_message_id=crm1,
        occurred_at=T0 + timedelta(days=3),
    )
    await publish(settings, [(topics.engagement_deletes, inbox, delete)])
    await run()
    deleted = [e for e in await engagements() if e.event_type == "engagement.deleted"]
    assert [(e.engagement_id, e.occurred_at) for e in deleted] == [(r1, delete.occurred_at)]

    # phase 4 (day 8): both bodies are past 7 days -> body.expired for each, dated day 7
    await at(8, "m3", reply_raw(f"m3-{unique}@x", None, None, "news", "n"), 6)
    await run()
    expired = [e for e in await engagements() if e.event_type == "body.expired"]
    assert sorted(e.engagement_id for e in expired) == sorted(
        [r1, engagement_id(inbox, f"r2-{unique}@x")]
    )
    assert {e.occurred_at for e in expired} == {T0 + timedelta(days=7)}

    # phase 5 (day 100): metadata older than 60 days and the engagement deleted on day 3
    # (90 days ago) leave the state; r2 stays (engagements live until deleted)
    await at(100, "m4", reply_raw(f"m4-{unique}@x", None, None, "news", "n"), 7)
    await run()
    state = await state_of()
    assert state["messages"] == 1
    assert state["engagements"] == {engagement_id(inbox, f"r2-{unique}@x")}
    # nothing was emitted twice over the five restarts
    ids = [e.event_id for e in await engagements()]
    assert len(ids) == len(set(ids))


async def read_all_raw(settings: Settings, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
    return [(r.value or b"", dict(r.headers)) for r in await read_records(settings, topic)]

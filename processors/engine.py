"""The processor's domain, with no Kafka in it: threads, CRM matching, held replies, retention.

Each ``on_*`` call takes one decoded input event and a partition's ``PartitionState`` and
returns what to emit, in order; the state records its own changes (``take_changes``) for the
driver to write to the changelogs. Everything is synchronous and a function of the events
alone (time is event time, never the clock), so the driver (``processors.processor``) can run
it inside a Kafka transaction and tests can run it with no Kafka at all.

One thing the engine cannot do by itself is read a body back: a reply held as the *offset* of
its body (never the body) needs that body when its CRM record comes. It then returns a
``BodyRead`` in the place of the engagement; the driver reads the body from inbox.bodies and
calls ``finish`` with it (or None when it is gone), which gives the engagement event. The
decision is taken, and the engagement recorded, before the read, so nothing later in the same
call can make a second one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeAlias

from inboxstream.core.contracts import HOUR_MS
from inboxstream.mail.limits import MAX_REFERENCES, cap_references, clip_text
from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.inputs import BodyHead, MessageIn, crm_of_record
from inboxstream.processors.matcher import Match, engagement_id, find_match
from inboxstream.processors.records import (
    Body,
    CrmRecord,
    EngagementRecord,
    Held,
    Reply,
    build_engagement,
)
from inboxstream.processors.retention import (
    BODY_TTL_MS,
    DELETED_PURGE_MS,
    METADATA_TTL_MS,
    REPLY_HOLD_MS,
    expired,
)
from inboxstream.processors.state import PartitionState, message_key
from inboxstream.schemas.models import (
    EngagementEvent,
    EngagementEventRecord,
    OutboundEvent,
    ThreadEvent,
    ThreadRecord,
)


@dataclass(frozen=True, slots=True)
class Emit:
    """One output event: ``inbox.threads`` or ``crm.engagements``, keyed by inbox id.

    ``record`` is the event as its Avro record, what is encoded and sent: built without a
    model, since the schema types every field when it is written (validating each output
    with pydantic was ~9% of the record path). ``event`` is the model, validated, for
    whoever reads an output rather than sending it (tests, tools)."""

    output: Literal["threads", "engagements"]
    key: str
    record: ThreadRecord | EngagementEventRecord

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        output: Literal["threads", "engagements"],
        key: str,
        record: ThreadRecord | EngagementEventRecord,
    ) -> None:
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "record", record)

    @property
    def event(self) -> ThreadEvent | EngagementEvent:
        fields = {**self.record, "occurred_at": _dt(self.record["occurred_at"])}
        if self.output == "threads":
            return ThreadEvent.model_validate(fields)
        return EngagementEvent.model_validate(fields)


@dataclass(frozen=True, slots=True)
class BodyRead:
    """An engagement waiting for its body, which lives at ``offset`` of inbox.bodies
    (same partition). Everything else the event needs was fixed when it was decided."""

    partition: int
    offset: int
    eng_id: str
    reply: Reply
    crm: CrmRecord | None
    match: Match
    thread_id: str | None

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        partition: int,
        offset: int,
        eng_id: str,
        reply: Reply,
        crm: CrmRecord | None,
        match: Match,
        thread_id: str | None,
    ) -> None:
        object.__setattr__(self, "partition", partition)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "eng_id", eng_id)
        object.__setattr__(self, "reply", reply)
        object.__setattr__(self, "crm", crm)
        object.__setattr__(self, "match", match)
        object.__setattr__(self, "thread_id", thread_id)


Step: TypeAlias = Emit | BodyRead


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Engine:
    """The pure processor. ``counts`` says what happened (duplicates, drops, expiries...)."""

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts: Counter[str] = counts if counts is not None else Counter()

    # --- inputs -------------------------------------------------------------------------

    def on_message(self, state: PartitionState, offset: int, ev: MessageIn) -> list[Step]:
        """Thread a new message; hold it as a reply candidate, or match it to CRM mail."""
        if ev.event_type != "message.new":
            self.counts["messages_ignored_type"] += 1
            return []
        inbox = ev.inbox_id
        observed = ev.observed_ms
        state.advance(observed)
        if state.knows(inbox, ev.event_id):
            self.counts["messages_duplicate"] += 1
            return []
        entry = MessageEntry(
            seq=offset,
            event_id=ev.event_id,
            message_id=ev.message_id,
            # Bounded like the producer bounds them: state and work per message stay small
            # even for events written before the caps (or by another producer).
            references=cap_references(ev.references)[0],
            in_reply_to=list(ev.in_reply_to[:MAX_REFERENCES]),
            subject=clip_text(ev.subject)[0] if ev.subject else ev.subject,
            date_ms=ev.date_ms if ev.date_ms is not None else ev.internal_date_ms,
            observed_ms=observed,
        )
        events, changed = state.inbox(inbox).add(entry)
        for e in changed:
            state.record_message(inbox, e)
        out: list[Step] = [self._emit_thread(inbox, t) for t in events]
        key = message_key(inbox, ev.event_id)
        orphan = state.pending.get(key)  # its body came first: we hold only the body's offset
        body_at = orphan.body_at if orphan else None
        automated = ev.automated  # inbox.messages v3
        if automated and (ev.in_reply_to or ev.references):
            # An out-of-office answer or a bounce refers to the CRM mail like a reply does,
            # but no person replied: threaded, counted, never an engagement.
            self.counts[f"automated_not_reply:{automated}"] += 1
        if (
            not (ev.in_reply_to or ev.references)
            or automated
            # Replies are incoming mail (the FAQ: "monitor incoming mail for replies"); the
            # owner's own follow-ups filed in the sent folder are threaded, never engagements.
            or ev.folder_role == "sent"
            or state.engaged(inbox, ev.message_id)  # a copy, logged
        ):
            if orphan is not None:
                state.put_pending(key, None)
            return out
        match = find_match(ev.message_id, entry.in_reply_to, entry.references, state.crm)
        state.put_pending(
            key, Held(since_ms=observed, reply=Reply.of(ev, entry), match=match, body_at=body_at)
        )
        if match is not None and body_at is not None:
            self._engagement(state, key, None, out)
        return out

    def on_body(self, state: PartitionState, offset: int, ev: BodyHead) -> list[Step]:
        """A body goes into an engagement, is held as an offset, or is dropped. The engine
        never sees the body's text: an engagement reads it by offset (``BodyRead``), which
        the driver finds among the records it has in hand before it goes to Kafka."""
        key = message_key(ev.inbox_id, ev.event_id)
        held = state.pending.get(key)
        if expired(ev.observed_ms, state.watermark_ms, BODY_TTL_MS):
            self.counts["bodies_too_old"] += 1
            return []
        if held is None:
            if not state.knows(ev.inbox_id, ev.event_id):
                # Its message is not processed yet (two topics, no order between them): hold
                # the body's offset, never the body, until the message comes.
                since = ev.observed_ms or state.watermark_ms
                state.put_pending(key, Held(since_ms=since, body_at=offset))
                self.counts["bodies_before_message"] += 1
                return []
            # Not a reply candidate: bodies of threads the CRM never sent or logged do not
            # enter state or output.
            self.counts["bodies_dropped"] += 1
            return []
        if held.reply is None:
            return []  # a second copy of an early body
        # Keep only where the body is (the inbox.bodies offset), never the body itself; a
        # matched reply reads it back now, a later match from the topic.
        state.put_pending(key, held.with_body_at(offset))
        out: list[Step] = []
        if held.match is not None:
            self._engagement(state, key, None, out)
        return out

    def on_crm(self, state: PartitionState, ev: OutboundEvent) -> list[Step]:
        """A CRM Message-ID for this partition's inboxes: remember it, match held replies."""
        return self.on_crm_record(state, ev.message_id, crm_of_record(ev.model_dump()))

    def on_crm_record(self, state: PartitionState, message_id: str, crm: CrmRecord) -> list[Step]:
        """``on_crm`` from the fields the ``crm`` store keeps (what the record path decodes)."""
        state.put_crm(message_id, crm)
        out: list[Step] = []
        for key in state.pending_mentioning(message_id):
            held = state.pending[key]
            if held.reply is None or held.match is not None:
                continue
            reply = held.reply
            match = find_match(reply.message_id, reply.in_reply_to, reply.references, state.crm)
            state.put_pending(key, held.with_match(match))
            if held.body_at is not None:
                self._engagement(state, key, None, out)
        return out

    def on_delete(self, state: PartitionState, cmd: EngagementEvent) -> list[Step]:
        """An engagement deleted in the CRM: announce it; forget it after the purge window."""
        if cmd.event_type != "engagement.deleted":
            raise ValueError(f"engagement-deletes takes engagement.deleted, got {cmd.event_type}")
        record = state.engagements.get(cmd.engagement_id)
        if record is None or record.deleted_ms is not None:
            self.counts["deletes_unknown_or_repeated"] += 1
            return []
        deleted_ms = _ms(cmd.occurred_at) or state.watermark_ms
        state.put_engagement(cmd.engagement_id, record.deleted_at(deleted_ms))
        event = record.lifecycle(cmd.engagement_id, "engagement.deleted", deleted_ms)
        return [self._emit_engagement(record.inbox_id, event)]

    # --- retention ------------------------------------------------------------------------

    def sweep(self, state: PartitionState) -> list[Step]:
        """Event-time retention for one partition (see ``processors.retention``)."""
        wm = state.watermark_ms
        out: list[Step] = []
        # Only what the due heaps name (the rest cannot have expired), in key order as a scan
        # of the whole store would meet it: the same outputs, in the same order.
        for key in state.pending_due_now():
            held = state.pending.get(key)
            if held is None or not expired(held.since_ms, wm, REPLY_HOLD_MS):
                continue
            if held.match is not None:
                # matched but its body never came: log the engagement without a body
                self._engagement(state, key, None, out)
            else:
                state.put_pending(key, None)
                self.counts["pending_expired"] += 1
        for eng_id in state.engagements_due_now():
            record = state.engagements.get(eng_id)
            if record is None:
                continue
            if record.deleted_ms is not None and expired(record.deleted_ms, wm, DELETED_PURGE_MS):
                state.put_engagement(eng_id, None)
            elif not record.body_expired and expired(record.created_ms, wm, BODY_TTL_MS):
                state.put_engagement(eng_id, record.body_gone())
                event = record.lifecycle(eng_id, "body.expired", record.created_ms + BODY_TTL_MS)
                out.append(self._emit_engagement(record.inbox_id, event))
        # Metadata: swept at most once per event-time hour (a full scan of the thread index).
        bucket = wm // HOUR_MS
        if bucket != state.swept_bucket:
            state.swept_bucket = bucket
            for inbox, index in list(state.threads.items()):
                # Only the expired ids are listed: a copy of every entry at each sweep was a
                # burst of allocations the size of the state, and the collector ran over it.
                gone = [
                    event_id
                    for event_id, entry in index.entries.items()
                    if expired(entry.observed_ms, wm, METADATA_TTL_MS)
                ]
                for event_id in gone:
                    state.drop_message(inbox, event_id)
        return out

    # --- engagements ----------------------------------------------------------------------

    def finish(self, state: PartitionState, read: BodyRead, body: Body | None) -> Emit:
        """The engagement of a ``BodyRead``, with the body the driver read (None: gone)."""
        if body is None:
            self.counts["bodies_unavailable"] += 1
            record = state.engagements.get(read.eng_id)
            if record is not None and not record.body_expired:
                state.put_engagement(read.eng_id, record.body_gone())
        return self._finish_now(read, body)

    def _engagement(
        self, state: PartitionState, key: str, body: Body | None, out: list[Step]
    ) -> None:
        """Turn a matched held reply into its engagement (once per inbox and reply)."""
        held = state.pending.get(key)
        if held is None or held.match is None or held.reply is None:
            return
        reply, match = held.reply, held.match
        eng_id = engagement_id(reply.inbox_id, reply.message_id)
        state.put_pending(key, None)
        if eng_id in state.engagements:
            return
        entry = state.inbox(reply.inbox_id).entries.get(reply.event_id)
        read_back = body is None and held.body_at is not None
        crm = state.crm.get(match.crm_message_id)
        state.put_engagement(
            eng_id,
            EngagementRecord(
                inbox_id=reply.inbox_id,
                message_id=reply.message_id,
                crm_message_id=match.crm_message_id,
                crm_kind=crm.kind if crm else "sent",
                created_ms=reply.observed_ms,
                # a body to read back counts as present until the read says otherwise
                body_expired=body is None and not read_back,
            ),
        )
        read = BodyRead(
            partition=state.partition,
            offset=held.body_at if held.body_at is not None else -1,
            eng_id=eng_id,
            reply=reply,
            crm=crm,
            match=match,
            thread_id=entry.thread_id if entry else None,
        )
        if read_back:
            out.append(read)
        else:
            # no body to read: ``finish`` with the body we have (or none, counted as expired)
            out.append(self._finish_now(read, body))

    def _finish_now(self, read: BodyRead, body: Body | None) -> Emit:
        event = build_engagement(
            reply=read.reply,
            body=body,
            crm=read.crm,
            match=read.match,
            thread_id=read.thread_id,
            occurred_ms=read.reply.observed_ms,
        )
        return self._emit_engagement(read.reply.inbox_id, event)

    def _emit_thread(self, inbox: str, record: ThreadRecord) -> Emit:
        self.counts[f"out:{record['event_type']}"] += 1
        return Emit("threads", inbox, record)

    def _emit_engagement(self, inbox: str, record: EngagementEventRecord) -> Emit:
        self.counts[f"out:{record['event_type']}"] += 1
        return Emit("engagements", inbox, record)

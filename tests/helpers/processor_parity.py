"""What the compiled record path and its sources must agree on, run in either build.

``tests/unit/test_compiled.py`` runs ``outputs`` in its own process (compiled) and in a second
interpreter that runs the sources (``python -m tests.helpers.processor_parity``), and compares
the two pickles. Two workloads, both seeded so both interpreters build the very same one:

* a hostile scenario through the engine (``tests.helpers.engine.Harness``): duplicate and
  missing Message-IDs, self-references, loops, references that disagree, subjects to merge,
  sent-folder and automated mail, CRM records, bodies before and after their messages,
  deletes, and event time marching past every retention period. Every output event (as its
  fields) and every changelog write, in both threading algorithms, and the state restored
  from those writes.
* a conversation workload through ``RecordPath`` in shares, as the driver hands them over:
  Avro decoding, the engine, bodies in hand, the sweep, then the records to send (the output
  and changelog bytes, exactly), with a record that does not decode among them.
"""

from __future__ import annotations

import pickle
import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from inboxstream.core.settings import Settings
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.matcher import engagement_id
from inboxstream.processors.record_path import Consumed, RecordPath
from inboxstream.processors.state import PartitionState
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import (
    Address,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
)
from inboxstream.schemas.serde import serde_for
from tests.helpers.engine import Harness
from tests.helpers.samples import body_event

T0 = datetime(2026, 3, 1, tzinfo=UTC)
INBOXES = ("a@owner.test", "b@owner.test")
SUBJECTS = (
    "Quote",
    "Re: Quote",
    "Fwd: quote",
    "[list] Plan",
    "Re: [LIST] plan (fwd)",
    "=?utf-8?q?Caf=C3=A9?=",
    "",
    None,
)


def _message(n: int, inbox: str, rng: random.Random, mids: list[str], at: datetime) -> Event:
    mid = rng.choice(mids) if mids and rng.random() < 0.1 else f"m{n}@x.test"  # duplicates
    earlier = rng.sample(mids, min(len(mids), rng.randint(0, 4)))
    refs = earlier + rng.choice([[], [mid], [f"gone{n % 7}@x.test"]])  # self, missing
    reply_to = refs[-1:] if refs and rng.random() < 0.8 else []
    return MessageEvent(
        event_id=f"e{n}",
        inbox_id=inbox,
        folder="INBOX",
        folder_role=rng.choice(["inbox", "inbox", "inbox", "sent"]),
        uidvalidity=1,
        uid=n,
        message_id=mid,
        in_reply_to=reply_to,
        references=refs if rng.random() < 0.7 else [],
        subject=rng.choice(SUBJECTS),
        date=at - timedelta(minutes=rng.randint(0, 600)) if rng.random() < 0.9 else None,
        **{"from": Address(name=rng.choice([None, "Cleo"]), email="cleo@customer.test")},
        size=100,
        raw_headers=b"",
        observed_at=at,
        automated="auto-replied" if rng.random() < 0.05 else None,
    )


def scenario(seed: int = 7, steps: int = 1200) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    mids: dict[str, list[str]] = {inbox: [] for inbox in INBOXES}
    at = T0
    for n in range(steps):
        # mostly minutes apart, now and then days: past the 24 h hold, the 7-day body TTL,
        # the 60-day metadata TTL and the 90-day purge of deletes
        at += (
            timedelta(minutes=rng.randint(0, 90))
            if rng.random() < 0.97
            else timedelta(days=rng.choice([2, 8, 61]))
        )
        inbox = rng.choice(INBOXES)
        kind = rng.random()
        if kind < 0.55:
            event = _message(n, inbox, rng, mids[inbox], at)
            mids[inbox].append(event.message_id)  # type: ignore[attr-defined]
        elif kind < 0.75 and n:
            k = rng.randint(max(0, n - 40), n + 5)  # its message before, or yet to come
            text = rng.choice(["the answer", "", "x" * 300])
            event = body_event(k, text, inbox=inbox, message_id=f"m{k}@x.test", at=at)
        elif kind < 0.9 and mids[inbox]:
            mid = rng.choice(mids[inbox][-30:])
            event = OutboundEvent(
                event_id=f"crm{n}",
                message_id=mid,
                inbox_id=inbox if rng.random() < 0.9 else None,
                kind=rng.choice(["sent", "logged", "sequence"]),
                crm_ref=f"deal-{n % 5}",
                sent_at=at,
            )
        elif mids[inbox]:
            event = EngagementEvent(
                event_id=f"del{n}",
                event_type="engagement.deleted",
                engagement_id=engagement_id(inbox, rng.choice(mids[inbox])),
                inbox_id=inbox,
                message_id="-",
                crm_message_id="-",
                occurred_at=at,
            )
        else:
            continue
        events.append(event)
    return events


def _through_the_engine(events: list[Event], algorithm: Algorithm) -> Any:
    h = Harness(state=PartitionState(0, algorithm=algorithm))
    for event in events:
        h.feed(event)
    restored = PartitionState(0, algorithm=algorithm)
    for (store, key), value in sorted(h.changelog.items()):
        restored.apply(store, key, value)
    return (
        [(e.output, e.key, e.event.model_dump()) for e in h.out],
        sorted(h.changelog.items()),
        sorted(h.engine.counts.items()),
        h.reads,
        {inbox: index.threads() for inbox, index in sorted(restored.threads.items())},
    )


def _conversations(
    topics: ProcessorTopics, threads: int = 90, *, corrupt: bool = True
) -> list[list[Consumed]]:
    """Shares of a conversation workload, in the driver's order (messages, CRM by inbox, the
    rest), each a slice of the topics' offsets."""
    by_topic: dict[str, list[tuple[str, Event]]] = {}
    n = 0
    for t in range(threads):
        inbox = INBOXES[t % 2]
        chain: list[str] = []
        if t % 3 == 0:
            crm = OutboundEvent(
                event_id=f"c{t}", message_id=f"t{t}-0@x", inbox_id=inbox, sent_at=T0
            )
            by_topic.setdefault(topics.crm_by_inbox, []).append((inbox, crm))
        for i in range(4):
            at = T0 + timedelta(hours=n)
            mid = f"t{t}-{i}@x"
            by_topic.setdefault(topics.messages, []).append(
                (
                    inbox,
                    MessageEvent(
                        event_id=f"e{n}",
                        inbox_id=inbox,
                        folder="INBOX",
                        folder_role="inbox",
                        uidvalidity=1,
                        uid=n,
                        message_id=mid,
                        in_reply_to=chain[-1:],
                        references=list(chain),
                        subject=f"Re: Topic {t}" if chain else f"Topic {t}",
                        **{"from": Address(email="cleo@customer.test")},
                        size=100,
                        raw_headers=b"",
                        observed_at=at,
                    ),
                )
            )
            body = body_event(n, f"reply {n} " * 20, inbox=inbox, message_id=mid, at=at)
            by_topic.setdefault(topics.bodies, []).append((inbox, body))
            chain.append(mid)
            n += 1
    records: list[Consumed] = []
    for topic, items in by_topic.items():
        for offset, (_, event) in enumerate(items):
            serde = serde_for(type(event))
            value = serde.encode(event)
            if corrupt and topic == topics.messages and offset == 17:
                value = value[:7]  # does not decode: a failure, and the share goes on
            records.append(Consumed(topic, 0, offset, value, serde.headers()))
    order = {topics.messages: 0, topics.crm_by_inbox: 1}
    return [
        sorted(
            (r for r in records if start <= r.offset < start + 40),
            key=lambda r: (order.get(r.topic, 2), r.offset),
        )
        for start in range(0, n, 40)
    ]


async def _through_the_record_path(*, corrupt: bool = True) -> Any:
    settings = Settings()
    topics = ProcessorTopics.build(settings.topics)
    path = RecordPath(settings.kafka, topics, counts=Counter())
    path.states[0] = PartitionState(0)
    outs = []
    for share in _conversations(topics, corrupt=corrupt):
        out = await path.handle(0, share)
        # the stack trace names the build's frames: the class and message are the outcome
        failures = [(i, stage, f.class_name, f.message) for i, stage, f in out.failures]
        outs.append((out.outgoing, failures, out.outputs, out.threads))
    return outs, sorted(path.counts.items())


def outputs() -> bytes:
    """Everything both workloads gave, pickled: what each build makes."""
    import asyncio

    events = scenario()
    engine = [_through_the_engine(events, algorithm) for algorithm in ("rfc5256", "references")]
    return pickle.dumps((engine, asyncio.run(_through_the_record_path())))


def main() -> None:
    sys.stdout.buffer.write(outputs())


if __name__ == "__main__":
    main()

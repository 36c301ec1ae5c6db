"""The hostile corpus (tests/helpers/hostile.py) through every pure stage: parse and encode
(the producer's worker), Avro decode, the stream processor's engine, the sink's rows. Every
message comes out exactly once, threaded and projected, and nothing raises."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inboxstream.core.contracts import MAX_EVENT_BYTES
from inboxstream.processors.jwz import ThreadInput, thread_messages
from inboxstream.processors.mbox import thread_input_from_bytes
from inboxstream.producers.encode import encode_message
from inboxstream.producers.parse import FetchedMessage
from inboxstream.schemas.models import BodyEvent, MessageEvent, ThreadEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.clickhouse import json_each_row
from inboxstream.sinks.rows import body_row, metadata_row, record_of, thread_row
from tests.helpers.engine import Harness
from tests.helpers.hostile import hostile_corpus, hostile_folders, hostile_mailboxes

INBOX = "victim@hostile.test"


def run_through(raws: list[bytes], folder: str) -> None:
    messages: list[MessageEvent] = []
    bodies: list[BodyEvent] = []
    for uid, raw in enumerate(raws, start=1):
        fetched = FetchedMessage(INBOX, folder, "inbox", 7, uid, raw, size=len(raw))
        encoded = encode_message(fetched)
        kinds = [r.topic for r in encoded.records]
        assert kinds.count("messages") == 1, kinds
        for record in encoded.records:
            assert len(record.value) <= MAX_EVENT_BYTES
            if record.topic == "messages":
                serde = serde_for(MessageEvent)
                messages.append(serde.decode(record.value, serde.headers()))
            else:
                body_serde = serde_for(BodyEvent)
                bodies.append(body_serde.decode(record.value, body_serde.headers()))
    assert [m.uid for m in messages] == list(range(1, len(raws) + 1))
    assert len({m.event_id for m in messages}) == len(raws)

    harness = Harness()
    for message, body in zip(messages, bodies, strict=False):
        harness.feed(message)
        harness.feed(body)
    for body in bodies[len(messages) :]:
        harness.feed(body)
    threads = [e.event for e in harness.out if e.output == "threads"]
    assert all(isinstance(t, ThreadEvent) for t in threads)
    latest = {t.message_event_id: t.thread_id for t in threads if t.event_type == "thread.assigned"}
    assert set(latest) == {m.event_id for m in messages}, "a message was not threaded"

    rows = [metadata_row(record_of(m)) for m in messages] + [body_row(record_of(b)) for b in bodies]
    rows += [thread_row(record_of(t)) for t in threads if isinstance(t, ThreadEvent)]
    json_each_row(rows)  # what the sink sends: must serialise for every row

    # The offline command reads the same messages: each exactly once in one thread.
    inputs: list[ThreadInput[int]] = [thread_input_from_bytes(i, r) for i, r in enumerate(raws)]
    keys = [k for t in thread_messages(inputs) for k in t.keys]
    assert sorted(keys) == list(range(len(raws)))


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile_mailboxes(), hostile_folders)
def test_hostile_mailboxes_come_out_whole(raws: list[bytes], folder: str) -> None:
    run_through(raws, folder)


@pytest.mark.parametrize("stack", [None, 200])
def test_the_full_corpus_at_its_worst_sizes(stack: int | None) -> None:
    # A worker thread or a deep call site has less stack left: nothing may depend on it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack or limit)
    try:
        run_through(hostile_corpus(), "INBOX")
    finally:
        sys.setrecursionlimit(limit)


@given(st.integers(min_value=0, max_value=20_000))
def test_reference_lists_of_any_length_thread_in_bounded_work(n: int) -> None:
    refs = tuple(f"r{i}@x" for i in range(n))
    inputs = [ThreadInput(key=0, message_id="m@x", references=refs)]
    [thread] = [t for t in thread_messages(inputs) if t.keys]
    assert thread.keys == (0,)
    json.dumps(thread.root_message_id)

"""cavro writes and reads our datums; fastavro is the oracle it must agree with byte for byte,
and the processor's projections (``decode_fields``) must read what the full decode reads."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.processors.inputs import (
    BODY_FIELDS,
    BODY_HEAD_FIELDS,
    MESSAGE_FIELDS,
    BodyHead,
    MessageIn,
    body_of_record,
    epoch_ms,
)
from inboxstream.processors.records import Body
from inboxstream.schemas.exceptions import DecodeError
from inboxstream.schemas.models import Address, BodyEvent, EngagementEvent, Event, MessageEvent
from inboxstream.schemas.serde import AvroSerde, _decoder, _is_flat, serde_for
from tests.helpers.samples import SAMPLES, sample_message


def _fastavro_bytes(serde: AvroSerde[Any], event: Event) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, serde.writer.parsed, event.model_dump(by_alias=True))
    return buf.getvalue()


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_cavro_writes_fastavros_bytes_and_reads_them_back(event: Event) -> None:
    serde = serde_for(type(event))
    ours = serde.encode(event)
    assert ours == _fastavro_bytes(serde, event)
    expected = fastavro.schemaless_reader(io.BytesIO(ours), serde.writer.parsed, None)
    assert serde.decode_record(ours, serde.headers()) == expected


@settings(max_examples=300, deadline=None)
@given(
    stamp=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    )
)
def test_timestamps_are_written_to_the_millisecond(stamp: datetime) -> None:
    # 2038-02-01 00:00:00.206 went through a float and came back as .205 with cavro's default
    for at in (stamp, datetime(2038, 2, 1, 0, 0, 0, 206000, tzinfo=UTC)):
        event = sample_message(date=at, internal_date=at, observed_at=at)
        serde = serde_for(MessageEvent)
        value = serde.encode(event)
        assert value == _fastavro_bytes(serde, event)
        back = serde.decode(value, serde.headers())
        assert back.date == back.observed_at == event.observed_at


texts = st.text(max_size=60)
addresses = st.builds(Address, name=st.one_of(st.none(), texts), email=st.text(min_size=1))
stamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    subject=st.one_of(st.none(), texts),
    sender=st.one_of(st.none(), addresses),
    to=st.lists(addresses, max_size=3),
    refs=st.lists(st.text(min_size=1, max_size=40), max_size=5),
    raw=st.binary(max_size=200),
    observed=stamps,
    date=st.one_of(st.none(), stamps),
    automated=st.sampled_from([None, "bounce", "bulk"]),
    role=st.sampled_from(["inbox", "sent", "other"]),
)
def test_the_processors_projection_reads_what_the_full_decode_reads(
    subject: str | None,
    sender: Address | None,
    to: list[Address],
    refs: list[str],
    raw: bytes,
    observed: datetime,
    date: datetime | None,
    automated: str | None,
    role: str,
) -> None:
    event = sample_message(
        subject=subject,
        from_=sender,
        to=to,
        references=refs,
        in_reply_to=refs[-1:],
        raw_headers=raw,
        observed_at=observed,
        date=date,
        internal_date=None,
        automated=automated,
        folder_role=role,
    )
    serde = serde_for(MessageEvent)
    value = serde.encode(event)
    assert value == _fastavro_bytes(serde, event)
    fast = MessageIn.of_record(serde.decode_fields(value, serde.headers(), MESSAGE_FIELDS))
    assert fast == MessageIn.of(serde.decode(value, serde.headers()))
    assert fast.observed_ms == epoch_ms(event.observed_at)


def test_projection_resolves_an_old_writer_version() -> None:
    v1 = AvroSerde(MessageEvent, writer_version=1)
    event = sample_message(automated=None, gm_msgid=None)
    value = v1.encode_record(
        {k: v for k, v in event.model_dump(by_alias=True).items() if k in _v1_fields(v1)}
    )
    fields = serde_for(MessageEvent).decode_fields(value, v1.headers(), MESSAGE_FIELDS)
    assert fields["automated"] is None  # not in v1: the reader's default
    assert MessageIn.of_record(fields) == MessageIn.of(event)


def _v1_fields(serde: AvroSerde[Any]) -> set[str]:
    return {f["name"] for f in serde.writer.parsed["fields"]}


def test_body_head_and_body_read_only_their_fields() -> None:
    event = next(e for e in SAMPLES if isinstance(e, BodyEvent))
    serde = serde_for(BodyEvent)
    value = serde.encode(event)
    head = serde.decode_fields(value, serde.headers(), BODY_HEAD_FIELDS)
    assert set(head) == set(BODY_HEAD_FIELDS)
    assert BodyHead.of_record(head) == BodyHead.of(event)
    body = body_of_record(serde.decode_fields(value, serde.headers(), BODY_FIELDS))
    assert body == Body.of(event)


def test_projection_of_corrupt_bytes_is_a_decode_error() -> None:
    serde = serde_for(MessageEvent)
    value = serde.encode(sample_message())
    with pytest.raises(DecodeError):
        serde.decode_fields(value[:40], serde.headers(), MESSAGE_FIELDS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_a_flat_models_attributes_are_its_record(event: Event) -> None:
    # serde.encode writes a flat model's __dict__ instead of dumping it: the same record
    if _is_flat(type(event)):
        assert event.__dict__ == event.model_dump(by_alias=True)
    assert _is_flat(type(event)) != isinstance(event, MessageEvent | BodyEvent | EngagementEvent)


def test_the_projection_shortcut_decides_as_the_full_path() -> None:
    """``decode_fields`` looks the writer and the body's start up once per header values;
    framed or not, it reads what cavro reads, and a value the headers misdescribe gets the
    full path's error."""
    serde = serde_for(MessageEvent)
    event = sample_message()
    body = serde.encode(event)
    expected = _decoder(serde.writer, serde.reader, MESSAGE_FIELDS).binary_decode(body)
    framed = b"\x00" + (4242).to_bytes(4, "big") + body  # an id no registry here knows
    plain_headers, framed_headers = serde.headers(framed=False), serde.headers(framed=True)
    for _ in range(2):  # the second time from the looked-up projection
        assert serde.decode_fields(body, plain_headers, MESSAGE_FIELDS) == expected
        assert serde.decode_fields(framed, framed_headers, MESSAGE_FIELDS) == expected
    fp = serde.reader.fingerprint.encode()
    for wire in (None, b"confluent"):
        assert serde._projections[(fp, wire, MESSAGE_FIELDS)] is not None
    with pytest.raises(DecodeError, match="Confluent wire format"):
        serde.decode_fields(b"\x07" + framed[1:], framed_headers, MESSAGE_FIELDS)
    with pytest.raises(DecodeError, match="Confluent wire format"):
        serde.decode_fields(b"\x00\x00", framed_headers, MESSAGE_FIELDS)
    with pytest.raises(DecodeError, match="corrupt"):
        serde.decode_fields(framed[:40], framed_headers, MESSAGE_FIELDS)


def test_headers_as_one_tuple_read_what_fresh_lists_read() -> None:
    """The engine process is sent one tuple per kind of headers, and ``decode_fields``
    remembers the last one by identity: alternating fields, writer versions and kinds of
    headers must each still read as a fresh list of the same headers does."""
    serde = serde_for(MessageEvent)
    v1 = AvroSerde(MessageEvent, writer_version=1)
    event = next(e for e in SAMPLES if isinstance(e, MessageEvent))
    new = (serde.encode(event), tuple(serde.headers(event.event_type)))
    old_record = {k: v for k, v in event.model_dump(by_alias=True).items() if k in _v1_fields(v1)}
    old = (v1.encode_record(old_record), tuple(v1.headers()))
    few = ("event_id", "inbox_id")
    for value, headers in [new, new, old, new, old, old, new] * 2:
        for fields in (MESSAGE_FIELDS, few, MESSAGE_FIELDS):
            got = serde.decode_fields(value, headers, fields)
            assert got == serde.decode_fields(value, list(headers), fields)
            assert set(got) == set(fields)
        if headers is old[1]:
            assert serde.decode_fields(value, headers, MESSAGE_FIELDS)["automated"] is None

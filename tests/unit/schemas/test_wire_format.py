"""The Confluent wire format: magic byte 0, a 4-byte schema id, the Avro datum; resolved by
id, checked against our fingerprint header, and old bare records still read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.schemas import serde as serde_module
from inboxstream.schemas.exceptions import DecodeError
from inboxstream.schemas.models import MessageEvent, StatusEvent
from inboxstream.schemas.serde import (
    HEADER_FINGERPRINT,
    HEADER_WIRE,
    WireIds,
    default_registry,
    serde_for,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def status(reason: str | None = "r", event_id: str = "e1") -> StatusEvent:
    return StatusEvent(
        event_id=event_id, inbox_id="ann", state="idle", at=NOW, server="h:1", reason=reason
    )


def registered(wire: WireIds, schema_id: int = 42) -> None:
    wire.learn(default_registry().latest("inbox.status"), schema_id)


def test_without_a_registry_values_are_bare_datums(no_schema_registry: WireIds) -> None:
    serde = serde_for(StatusEvent)
    value = serde.encode(status())
    assert HEADER_WIRE not in dict(serde.headers())
    assert serde.decode(value, serde.headers()) == status()


def test_registered_values_are_framed_with_the_id(no_schema_registry: WireIds) -> None:
    registered(no_schema_registry, 0x01020304)
    serde = serde_for(StatusEvent)
    value = serde.encode(status())
    assert value[:5] == b"\x00\x01\x02\x03\x04"
    headers = serde.headers("x")
    assert dict(headers)[HEADER_WIRE] == b"confluent"
    assert dict(headers)[HEADER_FINGERPRINT] == serde.writer.fingerprint.encode()
    assert serde.decode(value, headers) == status()
    assert serde.writer_of(value, headers) == (serde.writer, 5)


def test_an_old_bare_record_still_reads_once_values_are_framed(
    no_schema_registry: WireIds,
) -> None:
    serde = serde_for(StatusEvent)
    bare, bare_headers = serde.encode(status()), serde.headers()
    registered(no_schema_registry)
    assert serde.decode(bare, bare_headers) == status()


def test_an_id_we_did_not_register_is_fetched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = WireIds()
    monkeypatch.setattr(serde_module, "WIRE", writer)
    registered(writer, 7)
    serde = serde_for(StatusEvent)
    value, headers = serde.encode(status()), serde.headers()

    reader = WireIds()  # another process: it knows no ids
    asked: list[int] = []

    def fetch(schema_id: int) -> str:
        asked.append(schema_id)
        return default_registry().latest("inbox.status").text

    reader.fetch = fetch
    monkeypatch.setattr(serde_module, "WIRE", reader)
    assert serde.decode(value, headers) == status()
    assert serde.decode(value, headers) == status()
    assert asked == [7]
    # a foreign producer's record (no headers of ours) is read by the id alone
    assert serde.decode(value, []) == status()


def test_our_fingerprint_header_wins_over_an_id_a_registry_gave_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry that lost its data hands id 7 to another schema: the header has the truth."""
    writer = WireIds()
    monkeypatch.setattr(serde_module, "WIRE", writer)
    registered(writer, 7)
    serde = serde_for(StatusEvent)
    value, headers = serde.encode(status()), serde.headers()
    confused = WireIds()
    confused.fetch = lambda _id: default_registry().latest("inbox.messages").text
    monkeypatch.setattr(serde_module, "WIRE", confused)
    assert serde.decode(value, headers) == status()

    # and the registry being down is no reason to stop reading our own records
    def down(_id: int) -> str:
        raise OSError("connection refused")

    unreachable = WireIds()
    unreachable.fetch = down
    monkeypatch.setattr(serde_module, "WIRE", unreachable)
    assert serde.decode(value, headers) == status()


def test_broken_frames_are_decode_errors(no_schema_registry: WireIds) -> None:
    registered(no_schema_registry)
    serde = serde_for(StatusEvent)
    headers = serde.headers()
    with pytest.raises(DecodeError, match="wire format"):
        serde.decode(b"\x01\x00", headers)
    with pytest.raises(DecodeError, match="schema id 9"):
        serde.decode(b"\x00\x00\x00\x00\x09rest", [])  # unknown id, no registry, no header
    message = serde_for(MessageEvent)
    with pytest.raises(DecodeError, match="expected a inbox.messages record"):
        message.decode(serde.encode(status()), headers)


def test_worker_processes_get_the_same_ids(no_schema_registry: WireIds) -> None:
    registered(no_schema_registry, 11)
    copy = WireIds()
    copy.restore(no_schema_registry.snapshot())
    fp = default_registry().latest("inbox.status").fingerprint
    assert copy.prefix(fp) == no_schema_registry.prefix(fp) == b"\x00\x00\x00\x00\x0b"


@given(
    st.integers(min_value=0, max_value=2**31 - 1),
    st.one_of(st.none(), st.text(max_size=40)),
    st.text(min_size=1, max_size=20),
)
def test_framed_round_trip(schema_id: int, reason: str | None, event_id: str) -> None:
    wire = WireIds()
    registered(wire, schema_id)
    old = serde_module.WIRE
    serde_module.WIRE = wire
    try:
        serde = serde_for(StatusEvent)
        event = status(reason, event_id)
        value = serde.encode(event)
        assert int.from_bytes(value[1:5], "big") == schema_id
        assert serde.decode(value, serde.headers()) == event
    finally:
        serde_module.WIRE = old

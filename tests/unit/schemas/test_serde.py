from __future__ import annotations

import json
import shutil
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from inboxstream.schemas import models
from inboxstream.schemas.exceptions import DecodeError, EncodeError
from inboxstream.schemas.models import (
    ALL_EVENTS,
    Event,
    MessageEvent,
    StatusEvent,
)
from inboxstream.schemas.serde import (
    HEADER_FINGERPRINT,
    SCHEMA_DIR,
    AvroSerde,
    SchemaRegistry,
    serde_for,
)
from tests.helpers.samples import SAMPLES, sample_message


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    serde = serde_for(type(event))
    assert serde.decode(serde.encode(event), serde.headers()) == event


def test_headers_carry_schema_and_fingerprint() -> None:
    serde = serde_for(MessageEvent)
    headers = dict(serde.headers("message.new"))
    assert headers["inboxstream.schema"] == b"inbox.messages"
    assert headers[HEADER_FINGERPRINT] == serde.writer.fingerprint.encode()
    assert len(serde.writer.fingerprint) == 16  # CRC-64-AVRO as hex
    assert headers["inboxstream.event-type"] == b"message.new"


def _avro_field_types(schema: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f for f in schema["fields"]}


def _is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


@pytest.mark.parametrize("model", ALL_EVENTS, ids=lambda m: m.__name__)
def test_model_and_schema_agree_field_for_field(model: type[Event]) -> None:
    newest = SchemaRegistry().latest(model.schema_name)
    path = SCHEMA_DIR / f"{model.schema_name}.v{newest.version}.avsc"
    raw = json.loads(path.read_text())
    avro = _avro_field_types(raw)
    model_fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    assert set(avro) == set(model_fields), f"{model.__name__} and {path.name} disagree"
    for name, avro_field in avro.items():
        field = model_fields[name]
        avro_type = avro_field["type"]
        nullable = isinstance(avro_type, list) and "null" in avro_type
        assert nullable == _is_optional(field.annotation), f"{name}: nullability differs"
        # A field with an Avro default must have a model default, and vice versa.
        assert ("default" in avro_field) == (not field.is_required()), f"{name}: default"
        if "default" in avro_field and avro_field["default"] not in ([], None):
            assert field.default == avro_field["default"], f"{name}: default value"


RECORDS = [
    (models.AddressRecord, models.Address),
    (models.AttachmentRecord, models.Attachment),
    (models.ThreadRecord, models.ThreadEvent),
    (models.AttachmentRefRecord, models.AttachmentRef),
    (models.EngagementEventRecord, models.EngagementEvent),
]


@pytest.mark.parametrize(("record", "model"), RECORDS, ids=lambda t: t.__name__)
def test_each_record_type_has_its_models_fields(record: type, model: type[BaseModel]) -> None:
    """The hot paths build these dicts instead of models; the codec encodes them against the
    schema, so a field missing here is an encoding failure at run time, not a type error."""
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    hints = get_type_hints(record, vars(models))
    assert list(hints) == list(fields)
    for name, hint in hints.items():
        assert _is_optional(hint) == _is_optional(fields[name].annotation), name


def test_v1_record_is_read_with_v2_that_added_a_defaulted_field(tmp_path: Path) -> None:
    schema_dir = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, schema_dir)
    v1 = json.loads((schema_dir / "inbox.status.v1.avsc").read_text())
    v2 = dict(v1)
    v2["fields"] = [
        *v1["fields"],
        {"name": "hint", "type": ["null", "string"], "default": None},
        {"name": "attempt", "type": "int", "default": 0},
    ]
    (schema_dir / "inbox.status.v2.avsc").write_text(json.dumps(v2))
    registry = SchemaRegistry(schema_dir)

    old_writer = AvroSerde(StatusEvent, registry, writer_version=1)
    new_reader = AvroSerde(StatusEvent, registry)
    assert new_reader.reader.version == 2
    event = SAMPLES[2]
    value = old_writer.encode(event)
    record = new_reader.decode_record(value, old_writer.headers())
    assert record["hint"] is None and record["attempt"] == 0
    assert record["reason"] == "auth failed"
    # And the v2 writer's fingerprint differs, so readers can tell the versions apart.
    assert new_reader.writer.fingerprint != old_writer.writer.fingerprint


def test_missing_fingerprint_header_is_a_decode_error() -> None:
    serde = serde_for(StatusEvent)
    with pytest.raises(DecodeError, match="fingerprint"):
        serde.decode(serde.encode(SAMPLES[2]), [])  # type: ignore[arg-type]


def test_unknown_fingerprint_is_a_decode_error() -> None:
    serde = serde_for(StatusEvent)
    with pytest.raises(DecodeError, match="unknown writer schema"):
        serde.decode(serde.encode(SAMPLES[2]), [(HEADER_FINGERPRINT, b"0123456789abcdef")])


def test_record_of_another_topic_is_refused() -> None:
    status = serde_for(StatusEvent)
    with pytest.raises(DecodeError, match="expected a inbox.messages record"):
        serde_for(MessageEvent).decode(status.encode(SAMPLES[2]), status.headers())


def test_tombstone_is_a_decode_error() -> None:
    serde = serde_for(StatusEvent)
    with pytest.raises(DecodeError, match="tombstone"):
        serde.decode(None, serde.headers())


def test_encode_error_is_ours() -> None:
    serde = serde_for(StatusEvent)
    with pytest.raises(EncodeError):
        serde.encode_record({"event_id": 5})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_corrupt_bytes_raise_decode_error_only(data: bytes) -> None:
    serde = serde_for(MessageEvent)
    try:
        serde.decode(data, serde.headers())
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    subject=st.one_of(st.none(), st.text()),
    uid=st.integers(min_value=1, max_value=2**32 - 1),
    refs=st.lists(st.text(min_size=1, max_size=40), max_size=5),
    raw=st.binary(max_size=200),
    ts=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_round_trip_property(
    subject: str | None, uid: int, refs: list[str], raw: bytes, ts: datetime
) -> None:
    event = sample_message(
        subject=subject, uid=uid, references=refs, raw_headers=raw, observed_at=ts, date=ts
    )
    serde = serde_for(MessageEvent)
    assert serde.decode(serde.encode(event), serde.headers()) == event


def test_timestamps_are_normalised_to_utc_milliseconds() -> None:
    from datetime import timedelta, timezone

    local = datetime(2026, 1, 1, 12, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2)))
    event = sample_message(observed_at=local)
    assert event.observed_at == datetime(2026, 1, 1, 10, 0, 0, 999000, tzinfo=UTC)
    naive = sample_message(observed_at=datetime(2026, 1, 1, 12, 0))
    assert naive.observed_at.tzinfo == UTC

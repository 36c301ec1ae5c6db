"""The compiled codec (schemas/_avro_native.c) against cavro, its reference: the same bytes out
for every record it encodes, the same values for every datum it decodes, and ``Fallback`` (so
cavro decides) for anything else, never a different answer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cavro
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inboxstream.processors.inputs import BODY_FIELDS, BODY_HEAD_FIELDS, MESSAGE_FIELDS
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import BodyEvent, EngagementEvent, MessageEvent, ThreadEvent
from inboxstream.schemas.native_codec import NATIVE, Fallback, native_codec
from inboxstream.schemas.serde import (
    SCHEMA_DIR,
    _cavro,
    _codec,
    _decoder,
    _plain,
    serde_for,
)
from tests.helpers.samples import SAMPLES

SCHEMAS = sorted(SCHEMA_DIR.glob("*.avsc"))
REPO = Path(__file__).resolve().parents[3]
_CAVRO_OPTIONS = _cavro()[1]


def _source(path: Any) -> Any:
    return json.loads(path.read_text())


def test_the_compiled_codec_is_built() -> None:
    # ./run builds it (setup.py); without it every hot path silently runs on cavro alone
    assert NATIVE


@pytest.mark.parametrize("model", [MessageEvent, BodyEvent, ThreadEvent, EngagementEvent])
def test_the_hot_schemas_have_a_compiled_codec(model: Any) -> None:
    serde = serde_for(model)
    assert native_codec(json.loads(serde.writer.text)) is not None


def test_a_schema_outside_the_subset_gets_none() -> None:
    for schema in (
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["string", "long"]}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "double"}]},
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}],
        },  # noqa: E501
    ):
        assert native_codec(schema) is None


# --- records of any schema, generated from the schema -----------------------------------


def _values(schema: Any, named: dict[str, Any], namespace: str) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of(*(_values(s, named, namespace) for s in schema))
    if isinstance(schema, str):
        simple = {
            "null": st.none(),
            "boolean": st.booleans(),
            "long": st.integers(-(2**63), 2**63 - 1),
            "string": st.text(),
            "bytes": st.binary(max_size=40),
        }
        if schema in simple:
            return simple[schema]
        full = schema if "." in schema else f"{namespace}.{schema}"
        return st.deferred(lambda: named[full] if full in named else named[schema])
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        aware = st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.sampled_from(
                [UTC, timezone(timedelta(hours=-7, minutes=-30)), ZoneInfo("Europe/Paris")]
            ),
        )
        # or epoch milliseconds already, as the processor's output records hold them
        return st.one_of(aware, st.integers(-(2**63), 2**63 - 1))
    if kind == "array":
        return st.lists(_values(schema["items"], named, namespace), max_size=4)
    if kind == "record":
        space = schema.get("namespace", namespace)
        full = schema["name"] if "." in schema["name"] else f"{space}.{schema['name']}"
        record = st.fixed_dictionaries(
            {f["name"]: _values(f["type"], named, space) for f in schema["fields"]}
        )
        named[full] = named[schema["name"]] = record
        return record
    return _values(kind, named, namespace)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encodes_cavros_bytes_and_decodes_what_cavro_reads(path: Any, data: st.DataObject) -> None:
    source = _source(path)
    native = native_codec(source)
    if native is None:
        return  # outside the subset: cavro alone, nothing to compare
    record = data.draw(_values(source, {}, ""))
    reference = cavro.Schema(source, options=_CAVRO_OPTIONS)
    expected = reference.binary_encode(record)
    assert native.encode(record) == expected
    assert native.encode(record, b"\x00\x00\x00\x00\x07") == b"\x00\x00\x00\x00\x07" + expected
    # decoding reads timestamps as their long, as the projections do
    plain = cavro.Schema(_plain(source), options=_CAVRO_OPTIONS)
    assert native.decode(expected) == plain.binary_decode(expected)
    assert native.decode(b"xyz" + expected, 3) == plain.binary_decode(expected)
    names = [f["name"] for f in source["fields"]]
    fields = tuple(data.draw(st.lists(st.sampled_from(names), unique=True, min_size=1)))
    projection = native_codec(source, fields)
    assert projection is not None
    got = projection.decode(expected)
    assert list(got) == list(fields)
    assert got == {k: v for k, v in plain.binary_decode(expected).items() if k in fields}


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_datum_reads_as_cavro_reads_it_or_falls_back(
    path: Any, data: st.DataObject
) -> None:
    source = _source(path)
    native = native_codec(source)
    if native is None:
        return
    good = cavro.Schema(source, options=_CAVRO_OPTIONS).binary_encode(
        data.draw(_values(source, {}, ""))
    )
    damaged = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "cut", "add"]))
        at = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if how == "flip" and damaged:
            damaged[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del damaged[at:]
        else:
            damaged[at:at] = data.draw(st.binary(min_size=1, max_size=9))
    plain = cavro.Schema(_plain(source), options=_CAVRO_OPTIONS)
    try:
        ours = native.decode(bytes(damaged))
    except Fallback:
        return  # cavro decides, as the serde does
    try:
        theirs = plain.binary_decode(bytes(damaged))
    except EOFError:
        # cavro cannot read an array block with a negative count (the spec's blocks with
        # their byte size: a damaged terminator 0 -> 1 makes one); fastavro reads them as
        # the spec says, and so must we, to the datum's last byte
        theirs, end = _fastavro_plain(source, bytes(damaged))
        assert end == len(damaged)
    assert ours == theirs


def _fastavro_plain(source: Any, data: bytes) -> tuple[Any, int]:
    buf = io.BytesIO(data)
    value = fastavro.schemaless_reader(buf, fastavro.parse_schema(_plain(source)), None)
    return value, buf.tell()


def test_negative_block_counts_are_read_as_the_spec_says() -> None:
    source = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": {"type": "array", "items": "string"}}],
    }
    native = native_codec(source)
    assert native is not None
    # one block of -2 items (their 4 bytes announced), one of 1, the end
    data = b"\x03\x08\x02x\x02y\x02\x02z\x00"
    assert native.decode(data) == {"a": ["x", "y", "z"]} == _fastavro_plain(source, data)[0]


def test_values_it_is_not_sure_of_fall_back() -> None:
    source = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "n", "type": "long"},
            {"name": "s", "type": ["null", "string"]},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "b", "type": "boolean"},
        ],
    }
    native = native_codec(source)
    assert native is not None
    good = {"n": 1, "s": "x", "t": datetime(2026, 1, 1, tzinfo=UTC), "b": True}
    assert native.encode(good) == cavro.Schema(source, options=_CAVRO_OPTIONS).binary_encode(good)
    as_ms = {**good, "t": 1767225600000}  # the same instant in epoch milliseconds
    assert native.encode(as_ms) == native.encode(good)
    for bad in (
        {"s": "x", "t": good["t"], "b": True},  # missing: cavro may take a default
        {**good, "n": True},
        {**good, "n": 2**63},
        {**good, "n": 1.0},
        {**good, "s": "\udc80"},  # a lone surrogate is no UTF-8
        {**good, "t": datetime(2026, 1, 1)},  # naive
        {**good, "t": True},
        {**good, "t": 2**63},
        {**good, "b": 1},
        ["not", "a", "dict"],
    ):
        with pytest.raises(Fallback):
            native.encode(bad)
    with pytest.raises(Fallback):
        native.decode(native.encode(good) + b"\x00")  # bytes after the datum
    with pytest.raises(Fallback):
        native.decode(b"\x02\x02\xff\xfe")  # not UTF-8 (and cut short)


def test_the_serde_takes_the_compiled_path_and_cavro_after_a_fallback() -> None:
    serde = serde_for(MessageEvent)
    for event in SAMPLES:
        if isinstance(event, MessageEvent):
            record = event.model_dump(by_alias=True)
            assert serde.encode_record(record) == _codec(serde.writer).binary_encode(record)
    record = next(e for e in SAMPLES if isinstance(e, MessageEvent)).model_dump(by_alias=True)
    # a naive datetime: the compiled path falls back, and cavro writes what it always wrote
    naive = {**record, "observed_at": datetime(2026, 1, 1)}
    assert serde.encode_record(naive) == _codec(serde.writer).binary_encode(naive)
    # a value no codec takes: the compiled path falls back, and cavro's refusal is the error
    with pytest.raises(EncodeError, match="uid"):
        serde.encode_record({**record, "uid": "seven"})


@pytest.mark.parametrize(
    ("model", "fields"),
    [(MessageEvent, MESSAGE_FIELDS), (BodyEvent, BODY_HEAD_FIELDS), (BodyEvent, BODY_FIELDS)],
)
def test_the_processors_projections_read_what_cavro_reads(model: Any, fields: Any) -> None:
    serde = serde_for(model)
    for event in SAMPLES:
        if isinstance(event, model):
            value = serde.encode(event)
            expected = _decoder(serde.writer, serde.reader, fields).binary_decode(value)
            assert serde.decode_fields(value, serde.headers(), fields) == expected


def test_encoding_our_events_never_imports_cavro() -> None:
    """The parse workers and the producer only encode our own schemas: the compiled codec
    writes them all, so cavro (and the numpy it brings, ~20 MB a process) is never loaded."""
    script = (
        "import itertools, sys\n"
        "from inboxstream.app.mailgen import generate_mailbox\n"
        "from inboxstream.producers.encode import encode_message\n"
        "from inboxstream.producers.parse import FetchedMessage\n"
        "mails = itertools.islice(generate_mailbox('me@example.com', threads=50), 200)\n"
        "for i, mail in enumerate(mails):\n"
        "    fetched = FetchedMessage('me@example.com', 'INBOX', 'inbox', 1, i + 1, mail.raw)\n"
        "    assert len(encode_message(fetched).records) == 2\n"
    )
    assert NATIVE, "the compiled codec is not built: cavro would write every value"
    assert _cavro_loaded_by(script) == "[]"


def test_the_processors_outputs_never_import_cavro() -> None:
    """Its thread and engagement records (timestamps as epoch milliseconds), its projections
    of the inputs and its changelog writes: all on the compiled codec or JSON. A fallback per
    output cost more than the rest of the record path, and loaded numpy on the first one."""
    script = (
        "import asyncio, sys\n"
        "from tests.helpers.processor_parity import _through_the_record_path\n"
        "shares, counts = asyncio.run(_through_the_record_path(corrupt=False))\n"
        "assert sum(len(out[0]) for out in shares) > 1000 and not any(o[1] for o in shares)\n"
    )
    assert _cavro_loaded_by(script) == "[]"


def _cavro_loaded_by(script: str) -> str:
    """Which of cavro and numpy ``script`` loaded, run in a fresh interpreter."""
    script += "print(sorted(m for m in ('cavro', 'numpy') if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    return out.stdout.strip()

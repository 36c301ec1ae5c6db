"""Avro (de)serialisation for every topic, on fastavro.

* Schemas are parsed once per process from ``schemas/avro/<name>.v<N>.avsc``; the highest N is
  what we write, and every older version stays on disk so old records stay readable.
* Each record carries the writer schema's CRC-64-AVRO fingerprint in a Kafka header; the reader
  resolves it against its own (newest) schema, Avro rules applied (new fields take defaults).
* fastavro and pydantic errors become our ``DecodeError``/``EncodeError``, raised ``from``
  the cause.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import ValidationError

from inboxstream.schemas.exceptions import DecodeError, EncodeError, UnknownSchemaError
from inboxstream.schemas.models import Event

SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
HEADER_SCHEMA = "inboxstream.schema"
HEADER_FINGERPRINT = "inboxstream.schema-fingerprint"
HEADER_EVENT_TYPE = "inboxstream.event-type"

Headers = Sequence[tuple[str, bytes]]
E = TypeVar("E", bound=Event)

_FILE_RE = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    parsed: Any  # fastavro's parsed schema
    fingerprint: str


class SchemaRegistry:
    """Every schema version found in one folder, by name and by fingerprint."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self._by_name: dict[str, list[SchemaVersion]] = {}
        self._by_fingerprint: dict[str, SchemaVersion] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_RE.match(path.name)
            if not match:
                raise UnknownSchemaError(f"schema file {path.name} is not named <topic>.v<N>.avsc")
            raw = json.loads(path.read_text())
            parsed = fastavro.parse_schema(raw, named_schemas={})
            fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
            version = SchemaVersion(match["name"], int(match["version"]), parsed, fp)
            self._by_name.setdefault(version.name, []).append(version)
            self._by_fingerprint[fp] = version
        for versions in self._by_name.values():
            versions.sort(key=lambda v: v.version)

    def latest(self, name: str) -> SchemaVersion:
        return self.version(name, None)

    def version(self, name: str, version: int | None) -> SchemaVersion:
        versions = self._by_name.get(name)
        if not versions:
            raise UnknownSchemaError(f"no schema named {name!r}")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise UnknownSchemaError(f"schema {name!r} has no version {version}")

    def by_fingerprint(self, fp: str) -> SchemaVersion:
        try:
            return self._by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {fp}: the record was written by a newer or "
                "foreign producer; upgrade this consumer"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._by_name)


@cache
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()


def header(headers: Headers | None, key: str) -> bytes | None:
    for k, v in headers or ():
        if k == key:
            return v
    return None


class AvroSerde(Generic[E]):
    """Encode and decode one topic's events.

    ``writer_version`` pins what we write (tests use it to write old versions); by default the
    newest. Reading always resolves the record's writer schema to this process's newest schema.
    """

    def __init__(
        self,
        model: type[E],
        registry: SchemaRegistry | None = None,
        writer_version: int | None = None,
    ) -> None:
        self.model = model
        self.registry = registry or default_registry()
        self.writer = self.registry.version(model.schema_name, writer_version)
        self.reader = self.registry.latest(model.schema_name)
        self._headers: list[tuple[str, bytes]] = [
            (HEADER_SCHEMA, model.schema_name.encode()),
            (HEADER_FINGERPRINT, self.writer.fingerprint.encode()),
        ]
        self._headers_by_type: dict[str | None, list[tuple[str, bytes]]] = {}

    def encode(self, event: E) -> bytes:
        return self.encode_record(event.model_dump(by_alias=True))

    def encode_record(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        self.write_into(buf, record)
        return buf.getvalue()

    def write_into(self, buf: io.BytesIO, record: Mapping[str, Any]) -> None:
        """Append one record's value to ``buf`` (batch encoders share one buffer)."""
        try:
            fastavro.schemaless_writer(buf, self.writer.parsed, record)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
            raise EncodeError(
                f"{self.model.schema_name}: record does not fit schema "
                f"v{self.writer.version}: {exc}"
            ) from exc

    def headers(self, event_type: str | None = None) -> list[tuple[str, bytes]]:
        """Kafka headers for a record we encode: schema name, writer fingerprint, event type.
        One list per event type, shared by every record sent (aiokafka only reads it): the
        hot paths ask for it per record."""
        cached = self._headers_by_type.get(event_type)
        if cached is None:
            cached = list(self._headers)
            if event_type is not None:
                cached.append((HEADER_EVENT_TYPE, event_type.encode()))
            self._headers_by_type[event_type] = cached
        return cached

    def writer_of(self, value: bytes | None, headers: Headers | None) -> SchemaVersion | None:
        """The record's known writer schema of this topic, or ``None`` when ``decode_record``
        would refuse it for its value or headers (it then says why)."""
        try:
            return self._writer_of(value, headers)
        except DecodeError:
            return None

    def _writer_of(self, value: bytes | None, headers: Headers | None) -> SchemaVersion:
        if value is None:
            raise DecodeError(f"{self.model.schema_name}: record has no value (tombstone)")
        fp_raw = header(headers, HEADER_FINGERPRINT)
        if fp_raw is None:
            raise DecodeError(
                f"{self.model.schema_name}: record has no "
                f"{HEADER_FINGERPRINT} header; cannot know its writer schema"
            )
        try:
            writer = self.registry.by_fingerprint(fp_raw.decode("ascii"))
        except (UnknownSchemaError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{self.model.schema_name}: {exc}") from exc
        if writer.name != self.model.schema_name:
            raise DecodeError(f"expected a {self.model.schema_name} record, got {writer.name}")
        return writer

    def decode_record(self, value: bytes | None, headers: Headers | None) -> dict[str, Any]:
        """Bytes → dict shaped by the newest schema (old writer versions resolved)."""
        writer = self._writer_of(value, headers)
        assert value is not None  # _writer_of refuses a tombstone
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(value), writer.parsed, self.reader.parsed
            )
        except Exception as exc:  # fastavro raises many types for corrupt bytes
            raise DecodeError(
                f"{self.model.schema_name}: corrupt Avro payload ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{self.model.schema_name}: payload is not a record")
        return record

    def decode(self, value: bytes | None, headers: Headers | None) -> E:
        record = self.decode_record(value, headers)
        try:
            return self.model.model_validate(record)
        except ValidationError as exc:
            raise DecodeError(
                f"{self.model.schema_name}: record does not fit the model: "
                f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
            ) from exc


@cache
def serde_for(model: type[E]) -> AvroSerde[E]:
    """The process-wide serde of one event type (schemas parsed once)."""
    return AvroSerde(model)

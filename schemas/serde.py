"""Avro (de)serialisation for every topic: cavro encodes and decodes, fastavro parses.

* Values are written and read with cavro (Cython, schema compiled once into a codec): on our
  records it encodes and decodes about three times as fast as fastavro, byte for byte the same
  datums (``tests/unit/schemas/test_codec_parity.py`` holds the two libraries to that).
  fastavro stays for what it does once per schema: parsing and the canonical form behind the
  fingerprints.

* Schemas are parsed once per process from ``schemas/avro/<name>.v<N>.avsc``; the highest N is
  what we write, and every older version stays on disk so old records stay readable.
* Values are in the Confluent wire format once the schemas are registered (``WIRE``, filled by
  core/schema_registry.py): magic byte 0, the schema id (4 bytes, big-endian), the Avro datum.
  Every registry-aware reader (Kafka Connect, ksqlDB, Flink, ClickHouse's AvroConfluent,
  confluent-kafka) decodes them. Without a registry, values are bare datums as before.
* Each record also carries the writer schema's CRC-64-AVRO fingerprint in a Kafka header (and
  ``inboxstream.wire-format: confluent`` when framed). The reader takes the writer schema by
  id, checks it against that header (a registry that lost its data could hand out an id
  again), and resolves it against its own newest schema, Avro rules applied (new fields take
  defaults). A framed record without our headers (a foreign producer) is read by id alone.
* cavro, fastavro and pydantic errors become our ``DecodeError``/``EncodeError``, raised ``from``
  the cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel, ValidationError

from inboxstream.schemas.exceptions import DecodeError, EncodeError, UnknownSchemaError
from inboxstream.schemas.models import Event
from inboxstream.schemas.native_codec import Fallback, native_codec

if TYPE_CHECKING:
    import cavro

SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
HEADER_SCHEMA = "inboxstream.schema"
HEADER_FINGERPRINT = "inboxstream.schema-fingerprint"
HEADER_EVENT_TYPE = "inboxstream.event-type"
HEADER_WIRE = "inboxstream.wire-format"
WIRE_CONFLUENT = b"confluent"
MAGIC = b"\x00"

Headers = Sequence[tuple[str, bytes]]
E = TypeVar("E", bound=Event)

_FILE_RE = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    parsed: Any  # fastavro's parsed schema
    fingerprint: str
    #: The schema as written (logical types, defaults and docs kept): what gets registered.
    text: str = ""


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
            text = json.dumps(raw, separators=(",", ":"))
            version = SchemaVersion(match["name"], int(match["version"]), parsed, fp, text)
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

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every version of one schema, oldest first (the order they are registered in)."""
        return list(self._by_name.get(name, []))

    def known(self, fp: str) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)


@cache
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()


class WireIds:
    """The schema registry's ids of our schemas, and the writer schemas of ids we read.

    Filled when the schemas are registered (core/schema_registry.py); empty, nothing is framed.
    ``fetch`` (schema id -> schema JSON, from the registry) resolves ids we did not register
    ourselves: records of a newer version of us, or of a foreign producer."""

    def __init__(self) -> None:
        self._prefixes: dict[str, bytes] = {}
        self._by_id: dict[int, SchemaVersion] = {}
        self.fetch: Callable[[int], str] | None = None

    def learn(self, version: SchemaVersion, schema_id: int) -> None:
        self._prefixes[version.fingerprint] = MAGIC + schema_id.to_bytes(4, "big")
        self._by_id[schema_id] = version

    def prefix(self, fp: str) -> bytes | None:
        """The 5 bytes that frame a value of this writer schema, or None (not registered)."""
        return self._prefixes.get(fp)

    def writer(self, schema_id: int, reader: SchemaVersion) -> SchemaVersion:
        """The writer schema of an id, fetched from the registry the first time; a schema we
        also have on disk is ours (same fingerprint), else it is read as ``reader``'s kind."""
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        if self.fetch is None:
            raise UnknownSchemaError(
                f"schema id {schema_id} is not known and no schema registry is configured"
            )
        text = self.fetch(schema_id)
        try:
            parsed = fastavro.parse_schema(json.loads(text), named_schemas={})
        except (ValueError, TypeError, KeyError) as exc:
            raise UnknownSchemaError(f"schema id {schema_id} is not an Avro schema: {exc}") from exc
        fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        found = default_registry().known(fp) or SchemaVersion(reader.name, 0, parsed, fp, text)
        self._by_id[schema_id] = found
        return found

    def snapshot(self) -> list[tuple[str, int]]:
        """(fingerprint, id) of every registered schema: for worker processes."""
        return [(fp, int.from_bytes(p[1:], "big")) for fp, p in self._prefixes.items()]

    def restore(self, items: list[tuple[str, int]]) -> None:
        registry = default_registry()
        for fp, schema_id in items:
            version = registry.known(fp)
            if version is not None:
                self.learn(version, schema_id)


#: The process's registry ids (one registry per process: ids are the registry's, not a topic's).
WIRE = WireIds()


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
        self._headers_by_type: dict[tuple[str | None, bool], list[tuple[str, bytes]]] = {}
        self._flat = _is_flat(model)
        # decode_fields' shortcut: (fingerprint header, wire header, fields) -> the compiled
        # projection and where the Avro body starts, or None where the full path must decide
        self._projections: dict[tuple[bytes, bytes | None, tuple[str, ...]], Any] = {}
        # the last (headers, fields, projection) when the headers were a tuple
        self._last_projection: tuple[Headers, tuple[str, ...], tuple[Any, int]] | None = None

    def encode(self, event: E) -> bytes:
        # A flat model's attributes are already its Avro record (the processor's thread
        # events): model_dump would copy them field by field for nothing.
        record = event.__dict__ if self._flat else event.model_dump(by_alias=True)
        return self.encode_record(record)

    def encode_record(self, record: Mapping[str, Any]) -> bytes:
        """One record's value: the wire-format prefix when the schema is registered, then the
        Avro body (the compiled codec writes both into one buffer; cavro where it steps aside)."""
        prefix = WIRE.prefix(self.writer.fingerprint)
        native = _native(self.writer)
        if native is not None:
            try:
                encoded: bytes = native.encode(record, prefix or b"")
                return encoded
            except Fallback:
                pass  # a value the compiled codec is not sure of: cavro decides
        try:
            body: bytes = _codec(self.writer).binary_encode(record)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
            raise EncodeError(
                f"{self.model.schema_name}: record does not fit schema "
                f"v{self.writer.version}: {exc}"
            ) from exc
        return body if prefix is None else prefix + body

    @property
    def framed(self) -> bool:
        """Whether values are written in the Confluent wire format (the schema is registered)."""
        return WIRE.prefix(self.writer.fingerprint) is not None

    def headers(
        self, event_type: str | None = None, *, framed: bool | None = None
    ) -> list[tuple[str, bytes]]:
        """Kafka headers for a record we encode: schema name, writer fingerprint, event type,
        and the wire format when framed (``framed``: as the value was written, when that was
        elsewhere; by default as this process writes now). One list per event type, shared by
        every record sent (aiokafka only reads it): the hot paths ask for it per record."""
        key = (event_type, self.framed if framed is None else framed)
        cached = self._headers_by_type.get(key)
        if cached is None:
            cached = list(self._headers)
            if event_type is not None:
                cached.append((HEADER_EVENT_TYPE, event_type.encode()))
            if key[1]:
                cached.append((HEADER_WIRE, WIRE_CONFLUENT))
            self._headers_by_type[key] = cached
        return cached

    def writer_of(
        self, value: bytes | None, headers: Headers | None
    ) -> tuple[SchemaVersion, int] | None:
        """The record's writer schema of this topic and where its Avro datum starts (after the
        wire-format prefix), or ``None`` when ``decode_record`` would refuse it (it then says
        why)."""
        try:
            return self._writer_of(value, headers)
        except DecodeError:
            return None

    def _writer_of(self, value: bytes | None, headers: Headers | None) -> tuple[SchemaVersion, int]:
        if value is None:
            raise DecodeError(f"{self.model.schema_name}: record has no value (tombstone)")
        fp_raw = header(headers, HEADER_FINGERPRINT)
        framed = header(headers, HEADER_WIRE) == WIRE_CONFLUENT or (
            fp_raw is None and value[:1] == MAGIC
        )
        if framed:
            if len(value) < 5 or value[:1] != MAGIC:
                raise DecodeError(
                    f"{self.model.schema_name}: value is not in the Confluent wire format "
                    "(magic byte 0 and a 4-byte schema id)"
                )
            writer = self._by_id(int.from_bytes(value[1:5], "big"), fp_raw)
            start = 5
        elif fp_raw is None:
            raise DecodeError(
                f"{self.model.schema_name}: record has no "
                f"{HEADER_FINGERPRINT} header and no schema id; cannot know its writer schema"
            )
        else:
            writer = self._by_fingerprint(fp_raw)
            start = 0
        if writer.name != self.model.schema_name:
            raise DecodeError(f"expected a {self.model.schema_name} record, got {writer.name}")
        return writer, start

    def _by_fingerprint(self, fp_raw: bytes) -> SchemaVersion:
        try:
            return self.registry.by_fingerprint(fp_raw.decode("ascii"))
        except (UnknownSchemaError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{self.model.schema_name}: {exc}") from exc

    def _by_id(self, schema_id: int, fp_raw: bytes | None) -> SchemaVersion:
        """The writer by id; our fingerprint header, when there, has the last word (a registry
        that lost its data may give the id to another schema), and stands in when the
        registry cannot be asked."""
        try:
            writer = WIRE.writer(schema_id, self.reader)
        except Exception as exc:  # unknown id, registry unreachable, a schema that won't parse
            if fp_raw is not None:
                return self._by_fingerprint(fp_raw)
            raise DecodeError(f"{self.model.schema_name}: schema id {schema_id}: {exc}") from exc
        if fp_raw is not None and writer.fingerprint.encode() != fp_raw:
            return self._by_fingerprint(fp_raw)
        return writer

    def decode_record(self, value: bytes | None, headers: Headers | None) -> dict[str, Any]:
        """Bytes → dict shaped by the newest schema (old writer versions resolved)."""
        writer, start = self._writer_of(value, headers)
        assert value is not None  # _writer_of refuses a tombstone
        try:
            record = _decoder(writer, self.reader, None).binary_decode(
                value[start:] if start else value
            )
        except Exception as exc:  # fastavro raises many types for corrupt bytes
            raise DecodeError(
                f"{self.model.schema_name}: corrupt Avro payload ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{self.model.schema_name}: payload is not a record")
        return record

    def decode_fields(
        self, value: bytes | None, headers: Headers | None, fields: tuple[str, ...]
    ) -> dict[str, Any]:
        """Only ``fields`` of the record, as the newest schema has them, timestamps as epoch
        milliseconds (no ``datetime``) and no model: for hot paths that read a few fields of
        many records (the stream processor). Fields the projection leaves out are skipped by
        fastavro's resolver, never built; old writer versions resolve as in ``decode_record``.
        The schema guarantees the types, so nothing is validated twice."""
        fast: tuple[Any, int] | None = None
        last = self._last_projection
        if value is None:
            pass  # the full path below says why a tombstone is refused
        elif last is not None and last[0] is headers and last[1] is fields:
            fast = last[2]
        else:
            fast = self._projection(headers, fields)
            if fast is not None and type(headers) is tuple:
                # immutable, so the same object has the same headers: the stream processor's
                # engine process is sent one tuple per kind of headers (0.9 us a record saved)
                self._last_projection = (headers, fields, fast)
        if fast is not None:
            assert value is not None
            native, start = fast
            if len(value) >= start and (not start or value[:1] == MAGIC):
                try:
                    decoded: dict[str, Any] = native.decode(value, start)
                    return decoded
                except Exception:  # noqa: BLE001 - the full path below decides, and says why
                    pass
        writer, start = self._writer_of(value, headers)
        assert value is not None  # _writer_of refuses a tombstone
        # an older writer needs Avro's resolution rules: cavro's resolver applies them
        native = _native(writer, fields) if writer.fingerprint == self.reader.fingerprint else None
        if native is not None:
            try:
                projected: dict[str, Any] = native.decode(value, start)
                return projected
            except Fallback:
                pass  # a datum the compiled codec is not sure of: cavro decides
        try:
            record = _decoder(writer, self.reader, fields).binary_decode(
                value[start:] if start else value
            )
        except Exception as exc:  # fastavro raises many types for corrupt bytes
            raise DecodeError(
                f"{self.model.schema_name}: corrupt Avro payload ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{self.model.schema_name}: payload is not a record")
        return record

    def _projection(
        self, headers: Headers | None, fields: tuple[str, ...]
    ) -> tuple[Any, int] | None:
        """What ``_writer_of`` and ``_native`` decide for a record with these headers, looked
        up once per header values: with our fingerprint header the writer is the schema it
        names (a schema id in a framed value never overrides it), and the body starts after
        the 5-byte prefix exactly when the wire header says the value is framed. None when
        there is no fingerprint header, the writer is not the newest schema (resolution
        needs cavro) or the projection is outside the compiled codec's subset."""
        fp_raw = wire = None
        for k, v in headers or ():
            if k == HEADER_FINGERPRINT and fp_raw is None:
                fp_raw = v
            elif k == HEADER_WIRE and wire is None:
                wire = v
        if fp_raw is None:
            return None
        key = (fp_raw, wire, fields)
        if key not in self._projections:
            try:
                writer = self.registry.by_fingerprint(fp_raw.decode("ascii"))
            except (UnknownSchemaError, UnicodeDecodeError):
                return None  # not cached: the full path raises, and a later schema may come
            native = None
            if writer.fingerprint == self.reader.fingerprint:
                native = _native(writer, fields)
            self._projections[key] = (
                None if native is None else (native, 5 if wire == WIRE_CONFLUENT else 0)
            )
        projection: tuple[Any, int] | None = self._projections[key]
        return projection

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


def _is_flat(model: type[BaseModel]) -> bool:
    """Whether a model's ``__dict__`` is its ``model_dump(by_alias=True)``: no field renamed
    by an alias, no nested model anywhere in a field's type."""

    def nested(annotation: Any) -> bool:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return True
        return any(nested(arg) for arg in get_args(annotation))

    return all(f.alias is None and not nested(f.annotation) for f in model.model_fields.values())


#: cavro's options for every codec: records decode to dicts (fastavro's shape, what the models
#: and sinks take); timestamps encoded by integer arithmetic on the timedelta from the epoch
#: (cavro's default goes through ``timestamp() * 1000`` in floating point and writes 205 for
#: 2038-02-01 00:00:00.206: hypothesis found it); everything else is cavro's strict default.
_CODECS: dict[tuple[str, bool], cavro.Schema] = {}
_DECODERS: dict[tuple[str, str, tuple[str, ...] | None], Any] = {}


@cache
def _cavro() -> tuple[Any, Any]:
    """cavro and its options, imported on first use. cavro brings numpy (~20 MB of RSS), and a
    process that only encodes our own schemas never needs it: the compiled codec writes every
    record a backfill makes (parse workers stayed 20 MB smaller each, the producer too)."""
    import cavro

    options = cavro.DEFAULT_OPTIONS.replace(
        record_decodes_to_dict=True, alternate_timestamp_millis_encoding=True
    )
    return cavro, options


def _source(version: SchemaVersion) -> Any:
    return json.loads(version.text) if version.text else version.parsed


def _codec(version: SchemaVersion, plain: bool = False) -> cavro.Schema:
    """The compiled codec of one schema version (``plain``: without logical types)."""
    key = (version.fingerprint, plain)
    codec = _CODECS.get(key)
    if codec is None:
        source = _source(version)
        cavro, options = _cavro()
        codec = _CODECS[key] = cavro.Schema(_plain(source) if plain else source, options=options)
    return codec


def _decoder(writer: SchemaVersion, reader: SchemaVersion, fields: tuple[str, ...] | None) -> Any:
    """What decodes ``writer``'s datums as ``reader`` has them: the writer's own codec when
    they are one schema, else cavro's resolver (Avro's rules: new fields take defaults). With
    ``fields``, only those fields of the reader, timestamps as epoch milliseconds (the
    others are skipped, never built)."""
    key = (writer.fingerprint, reader.fingerprint, fields)
    decoder = _DECODERS.get(key)
    if decoder is None:
        if fields is None:
            if writer.fingerprint == reader.fingerprint:
                decoder = _codec(writer)
            else:
                decoder = _codec(reader).reader_for_writer(_codec(writer))
        else:
            source = _source(reader)
            by_name = {f["name"]: f for f in source["fields"]}
            missing = [f for f in fields if f not in by_name]
            if missing:
                raise UnknownSchemaError(f"{reader.name} has no fields {missing}")
            cavro, options = _cavro()
            projected = cavro.Schema(
                _plain(dict(source, fields=[by_name[f] for f in fields])), options=options
            )
            decoder = projected.reader_for_writer(_codec(writer, plain=True))
        _DECODERS[key] = decoder
    return decoder


_NATIVE: dict[tuple[str, tuple[str, ...] | None], Any] = {}


def _native(version: SchemaVersion, fields: tuple[str, ...] | None = None) -> Any | None:
    """The compiled codec of one schema version (with ``fields``, its projecting decoder), or
    ``None``: not built, or a schema outside its subset (``schemas/native_codec.py``)."""
    key = (version.fingerprint, fields)
    if key not in _NATIVE:
        _NATIVE[key] = native_codec(_source(version), fields)
    return _NATIVE[key]


def _plain(schema: Any) -> Any:
    """A schema without logical types (a timestamp reads as its long): the projections read
    epoch milliseconds, no ``datetime`` built to be taken apart again."""
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    return schema

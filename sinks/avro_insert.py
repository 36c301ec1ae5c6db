"""Kafka's Avro values straight into ClickHouse: the engine decodes, Python only frames.

A sink batch of ``inbox.messages`` spends most of its Python time decoding Avro (fastavro,
~15 µs a record) and building rows. ClickHouse reads Avro itself, in C++, at about 1.5 µs a
record, but only Object Container Files, not bare datums. The values on our topics are bare
datums of a known writer schema (named by the record's fingerprint header), and an OCF is just
a header holding that schema, then blocks of datums as they are: so a batch becomes one
container by concatenation, no record decoded or re-encoded in Python.

The row mapping of each table is then SQL over the container (``sinks/sql/avro/<table>.sql``),
the same mapping as ``sinks/rows.py``; tests/integration/sinks/test_avro_insert.py checks both
land the same rows over the generator's and the hostile corpus. Anything this path does not
take (a table without a mapping, a server backend, a record the engine refuses) goes the
Python way, which dead-letters what is really bad.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from fastavro.schema import to_parsing_canonical_form

from inboxstream.schemas.serde import SchemaVersion

_MAGIC = b"Obj\x01"


def _long(n: int) -> bytes:
    """Avro's zig-zag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes(data: bytes) -> bytes:
    return _long(len(data)) + data


Buffer = bytes | memoryview


def container(writer: SchemaVersion, values: Sequence[Buffer]) -> list[Buffer]:
    """One Object Container File holding ``values`` (bare datums of ``writer``) as one block,
    in pieces: the header with the block's count and size, the values as they are, the sync
    marker. ``write_pieces`` writes them where they lie: a sink batch's container is ~17 MB,
    and joining it into one bytes object (twice) took ~38 ms of the event loop a batch of
    20,000 records, while the next batch was being fetched (bench/sink.py)."""
    header, sync = _header(writer)
    size = sum(map(len, values))
    return [header + _long(len(values)) + _long(size), *values, sync]


def _iov_max() -> int:
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (AttributeError, ValueError, OSError):
        return 1024  # POSIX's minimum is 16; Linux has 1024


#: Pieces per ``writev`` call: the kernel takes at most this many.
_IOV_MAX = _iov_max()


def write_pieces(fd: int, pieces: Sequence[Buffer]) -> int:
    """Write ``pieces`` in order to ``fd`` with one ``writev`` per ``_IOV_MAX`` of them (no
    copy in Python, and the GIL released while the kernel copies); return the bytes written.
    A short write (a signal, a full disk) is finished piece by piece, or raises its OSError."""
    written = 0
    for i in range(0, len(pieces), _IOV_MAX):
        chunk = pieces[i : i + _IOV_MAX]
        want = sum(map(len, chunk))
        done = os.writev(fd, chunk)
        if done < want:
            rest = memoryview(b"".join(chunk))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        written += want
    return written


#: Container header and sync marker per writer fingerprint (a sink sees a handful of schemas).
_HEADERS: dict[str, tuple[bytes, bytes]] = {}


def _header(writer: SchemaVersion) -> tuple[bytes, bytes]:
    """The container header for one writer schema and its sync marker (any 16 bytes will do;
    a random one per schema, as writers do). The schema is written in its parsing canonical
    form, which drops logical types: the engine then reads timestamps as epoch milliseconds
    and the SQL converts them exactly."""
    found = _HEADERS.get(writer.fingerprint)
    if found is None:
        schema_json = to_parsing_canonical_form(writer.parsed)
        sync = os.urandom(16)
        meta = {b"avro.schema": schema_json.encode(), b"avro.codec": b"null"}
        encoded = _long(len(meta)) + b"".join(_bytes(k) + _bytes(v) for k, v in meta.items())
        found = _HEADERS[writer.fingerprint] = (_MAGIC + encoded + _long(0) + sync, sync)
    return found


@dataclass(frozen=True)
class AvroProjection:
    """How one table is filled from its topic's containers."""

    table: str
    #: rows the SQL leaves to the Python mapping (``WHERE NOT <this>`` finds them), if any
    engine_rows: str | None = None

    def insert_sql(self, database: str, source: str) -> str:
        select, columns = _select_sql(self.table)
        where = f"\nWHERE {self.engine_rows}" if self.engine_rows else ""
        names = ", ".join(f"`{c}`" for c in columns)
        return (
            f"INSERT INTO {database}.`{self.table}` ({names})\n"
            f"{select.format(source=source)}{where}"
        )

    def left_to_python_sql(self, source: str) -> str | None:
        """Which rows (their positions in the container) the SQL does not take."""
        if self.engine_rows is None:
            return None
        # numbered before the filter (rowNumberInAllBlocks counts the rows it sees), in one
        # stream so the numbers are the container's order
        return (
            "SELECT i FROM (SELECT rowNumberInAllBlocks() AS i, "
            f"{self.engine_rows} AS engine FROM {source}) WHERE NOT engine "
            "SETTINGS max_threads = 1"
        )


@functools.cache
def _select_sql(table: str) -> tuple[str, list[str]]:
    """The projection's SELECT and the columns it fills, in order (one item a line: the name
    after ``AS``, or the bare column)."""
    text = resources.files("inboxstream.sinks").joinpath(f"sql/avro/{table}.sql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    select = "\n".join(lines).strip().rstrip(";")
    body = select.split("SELECT", 1)[1].rsplit("FROM", 1)[0]
    columns = []
    for item in body.strip().splitlines():
        item = item.strip().rstrip(",")
        columns.append(item.rsplit(" AS ", 1)[-1].strip("`"))
    return select, columns


#: The tables the engine fills from Avro (the hot ones); the others map in Python.
PROJECTIONS: dict[str, AvroProjection] = {
    "email_metadata": AvroProjection("email_metadata", engine_rows="isValidUTF8(raw_headers)"),
    "bodies": AvroProjection("bodies"),
    "threads": AvroProjection("threads"),
}

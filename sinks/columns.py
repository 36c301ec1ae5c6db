"""Rows → columns for ClickHouse's columnar inputs. Pure logic, no I/O.

The sinks map each event to a row dict (sinks/rows.py); ClickHouse reads columns fastest. This
turns a batch of rows into one column per name, typed from the table's own column types
(``system.columns``), so both backends insert columnar: an Arrow table for the embedded engine
(its ``Python()`` table function reads Arrow without a copy per value), plain column lists for
clickhouse-connect's Native-format ``insert``.

The rows land exactly as the JSONEachRow text path wrote them: ``None`` in a column that is not
``Nullable`` becomes the type's default (what ``input_format_null_as_default`` did), and
DateTime64 values are cut to their precision, not rounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from inboxstream.sinks.exceptions import BadRowError

_WRAPPER_RE = re.compile(r"^(Nullable|LowCardinality)\((.*)\)$")
_ARRAY_RE = re.compile(r"^Array\((.*)\)$")
_DATETIME64_RE = re.compile(r"^DateTime64\((\d)(?:,\s*'([^']*)')?\)$")
_DATETIME_RE = re.compile(r"^DateTime(?:\('([^']*)'\))?$")
_INTEGERS = {
    f"{sign}Int{bits}": getattr(pa, f"{sign.lower()}int{bits}")()
    for sign in ("", "U")
    for bits in (8, 16, 32, 64)
}
_SIMPLE: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Bool": pa.bool_(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Date": pa.date32(),
    **_INTEGERS,
}
_UNITS = {0: "s", 3: "ms", 6: "us", 9: "ns"}


@dataclass(frozen=True)
class ColumnType:
    """One ClickHouse column as the converter needs it."""

    name: str
    arrow: pa.DataType
    nullable: bool
    default: Any  # what a None becomes in a column that is not Nullable

    @property
    def temporal(self) -> bool:
        return bool(pa.types.is_timestamp(self.arrow))


def column_type(name: str, ch_type: str) -> ColumnType | None:
    """The Arrow type of a ClickHouse type, or ``None`` for a type this does not map (the
    caller then inserts that table as text)."""
    nullable = False
    inner = ch_type.strip()
    while (wrapped := _WRAPPER_RE.match(inner)) is not None:
        nullable = nullable or wrapped[1] == "Nullable"
        inner = wrapped[2]
    arrow = _arrow(inner)
    if arrow is None:
        return None
    return ColumnType(name, arrow, nullable, _default(arrow))


def _arrow(ch_type: str) -> pa.DataType | None:
    if ch_type in _SIMPLE:
        return _SIMPLE[ch_type]
    if (array := _ARRAY_RE.match(ch_type)) is not None:
        element = column_type("", array[1])
        return None if element is None or element.nullable else pa.list_(element.arrow)
    if (dt64 := _DATETIME64_RE.match(ch_type)) is not None:
        unit = _UNITS.get(int(dt64[1]))
        return None if unit is None else pa.timestamp(unit, tz=dt64[2] or "UTC")
    if (dt := _DATETIME_RE.match(ch_type)) is not None:
        return pa.timestamp("s", tz=dt[1] or "UTC")
    return None


def _default(arrow: pa.DataType) -> Any:
    if pa.types.is_timestamp(arrow):
        return datetime(1970, 1, 1, tzinfo=UTC)  # ClickHouse's own default: the epoch
    if pa.types.is_date(arrow):
        return date(1970, 1, 1)
    if pa.types.is_string(arrow):
        return ""
    if pa.types.is_boolean(arrow):
        return False
    if pa.types.is_list(arrow):
        return []
    return 0  # numbers


def columns_of(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """The rows as one list per column, in row order (a missing key reads as ``None``)."""
    return {name: [row.get(name) for row in rows] for name in names}


def arrow_table(rows: Sequence[Mapping[str, Any]], types: Sequence[ColumnType]) -> pa.Table:
    """The batch as an Arrow table typed for the target table. A value that does not fit its
    column (a string that is not text, a negative count) is the row's fault: BadRowError,
    so the sink isolates that row and dead-letters it."""
    arrays = []
    for column in types:
        values = [row.get(column.name) for row in rows]
        if not column.nullable:
            values = [column.default if v is None else v for v in values]
        try:
            arrays.append(_array(values, column))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise BadRowError(f"column {column.name}: {type(exc).__name__}: {exc}") from exc
    return pa.Table.from_arrays(arrays, names=[c.name for c in types])


def _array(values: list[Any], column: ColumnType) -> pa.Array:
    if not column.temporal:
        return pa.array(values, type=column.arrow)
    # Python datetimes carry microseconds; ClickHouse's text reader cut them to the column's
    # precision, so convert at microseconds and truncate (not round) to the unit.
    unit = column.arrow.unit
    zone = column.arrow.tz
    if unit in ("us", "ns"):
        return pa.array(values, type=column.arrow)
    wide = pa.array(values, type=pa.timestamp("us", tz=zone))
    return wide.cast(column.arrow, safe=False)

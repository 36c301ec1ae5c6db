"""The compiled Avro codec (``_avro_native.c``) for the schemas that fit its subset.

``schemas/serde.py`` asks here first and keeps cavro for everything else: a schema with a type
the C code does not know gets no native codec (``None``), and a value or datum the C code is not
sure of raises ``Fallback``, after which the caller runs cavro, whose bytes and errors stay the
reference (tests/unit/schemas/test_native_codec.py holds the two to the same bytes).

The module is built by ``pip install`` (setup.py); without it (a source tree nobody built), or
with ``INBOXSTREAM_NATIVE_CODEC=0`` in the environment, everything runs on cavro alone, only
slower, and ``NATIVE`` says so.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from inboxstream.errors import InboxstreamError

_native: ModuleType | None
try:
    from inboxstream.schemas import _avro_native as _native
except ImportError:  # not built: cavro alone
    _native = None
if os.environ.get("INBOXSTREAM_NATIVE_CODEC") == "0":
    # cavro alone, by choice: to compare the two, or to rule the C code out of a problem
    _native = None

#: Whether the compiled codec is importable in this process.
NATIVE = _native is not None


class _UnsupportedError(InboxstreamError):
    """A schema outside the compiled subset."""


if _native is not None:
    Fallback: type[Exception] = _native.Fallback
else:

    class Fallback(InboxstreamError):  # type: ignore[no-redef]  # noqa: N818 - as the C names it
        """Never raised without the compiled module."""


def native_codec(schema: Any, fields: tuple[str, ...] | None = None) -> Any | None:
    """A compiled codec for ``schema`` (parsed JSON): ``encode(record, prefix)`` and
    ``decode(data, start)``; with ``fields``, ``decode`` returns only those top-level fields
    and every timestamp as its epoch milliseconds. ``None`` when the module is not built, the
    schema uses a type outside the subset, or lacks one of ``fields`` (cavro then says so)."""
    if _native is None:
        return None
    if fields is not None and not {f["name"] for f in schema["fields"]}.issuperset(fields):
        return None
    try:
        plan = _plan(schema, {}, "")
    except _UnsupportedError:
        return None
    return _native.Codec(plan, fields)


def _plan(schema: Any, named: dict[str, Any], namespace: str) -> Any:
    """The nested tuples ``_avro_native.Codec`` compiles (kinds are the module's constants)."""
    assert _native is not None
    if isinstance(schema, str):
        primitive = {
            "null": (_native.K_NULL,),
            "boolean": (_native.K_BOOL,),
            "long": (_native.K_LONG,),
            "string": (_native.K_STRING,),
            "bytes": (_native.K_BYTES,),
        }.get(schema)
        if primitive is not None:
            return primitive
        full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
        for name in (full, schema):
            if name in named:
                return named[name]
        raise _UnsupportedError(schema)  # int, float, double, or a name we do not know
    if isinstance(schema, list):
        if len(schema) != 2 or schema.count("null") != 1:
            raise _UnsupportedError("union other than [null, X]")
        index = schema.index("null")
        return (_native.K_NULLABLE, index, _plan(schema[1 - index], named, namespace))
    if not isinstance(schema, dict):
        raise _UnsupportedError(repr(schema))
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if kind == "long" and logical == "timestamp-millis":
        return (_native.K_TS_MILLIS,)
    if logical is not None:
        raise _UnsupportedError(logical)
    if kind == "array":
        return (_native.K_ARRAY, _plan(schema["items"], named, namespace))
    if kind == "record":
        space = schema.get("namespace", namespace)
        name = schema["name"]
        full = name if "." in name else f"{space}.{name}" if space else name
        if full in named:
            raise _UnsupportedError("recursive or redefined record")
        inner = full.rpartition(".")[0]
        fields = tuple((f["name"], _plan(f["type"], named, inner)) for f in schema["fields"])
        plan = (_native.K_RECORD, fields)
        named[full] = plan
        return plan
    if isinstance(kind, str | list):
        return _plan(kind, named, namespace)
    raise _UnsupportedError(repr(kind))

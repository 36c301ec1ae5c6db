"""Read-only access to ClickHouse for the people who ask it questions (``query``, ``analytics``,
the sink's query endpoint), enforced by ClickHouse itself.

Two locks, both the engine's own:

* every statement runs with ClickHouse's ``readonly = 1``: DDL, DML, ``SET`` and any change of a
  setting (``SETTINGS readonly = 0`` included) are refused, and so are the table functions that
  reach outside the database (``file``, ``url``, ``s3``, ``remote``, ``mysql``, ...), which
  ClickHouse counts as creating a table. On chDB that is a second connection to the same path
  opened with ``readonly=1``; on a server, the setting on every request.
* before that, ClickHouse's own parser (``formatQuerySingleLineOrNull``) decides what the
  statement is: exactly one statement, of a reading kind (SELECT, WITH, SHOW, DESCRIBE, EXISTS,
  EXPLAIN), with no ``INTO OUTFILE`` (which clickhouse-local, and so chDB, would execute even
  in readonly mode, as the client writing a file).

No regex over the user's text decides anything here: the decision is made on the parser's
canonical form, in which string literals and quoted names can no longer pass for keywords.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from inboxstream.sinks.clickhouse import parse_json_each_row
from inboxstream.sinks.exceptions import ClickHouseError

READ_KINDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXISTS", "EXPLAIN")
MAX_SQL_CHARS = 1_000_000
# Quoted text in the canonical form: '...' literals, `...` and "..." names, backslash escapes.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


class ReadOnlyError(ClickHouseError):
    """A statement the read paths do not run (not a read, several statements, a file write)."""


class ReadBackend(Protocol):
    """A backend handle that already runs everything with ``readonly = 1``."""

    database: str

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes: ...

    def close(self) -> None: ...


def sql_string(text: str) -> str:
    """``text`` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def refusal(canonical: str | None) -> str | None:
    """Why the parser's canonical form of a statement is not for a read path, or None."""
    if canonical is None:
        return "not one SQL statement ClickHouse can parse"
    unquoted = _QUOTED.sub("''", canonical)
    first = unquoted.split(None, 1)[0].upper() if unquoted.strip() else ""
    if first not in READ_KINDS:
        return f"{first or 'an empty statement'} is not a read; only {', '.join(READ_KINDS)}"
    if _OUTFILE.search(unquoted):
        return "INTO OUTFILE writes a file; read paths only return rows"
    return None


class ReadOnlyClickHouse:
    """The ``ClickHouse`` interface over a read-only backend: reads checked, writes refused."""

    def __init__(self, backend: ReadBackend) -> None:
        self._backend = backend
        self.database = backend.database

    def check(self, sql: str) -> None:
        """Raise ``ReadOnlyError`` unless ``sql`` is one reading statement."""
        if len(sql) > MAX_SQL_CHARS:
            raise ReadOnlyError(f"statement is over {MAX_SQL_CHARS} characters")
        answer = self._backend.query_bytes(
            f"SELECT formatQuerySingleLineOrNull({sql_string(sql)}) AS q", "JSONEachRow"
        )
        rows = parse_json_each_row(answer)
        canonical = rows[0]["q"] if rows else None
        reason = refusal(canonical)
        if reason is not None:
            raise ReadOnlyError(f"refused: {reason}")

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        self.check(sql)
        return self._backend.query_bytes(sql, fmt)

    def query(self, sql: str) -> list[dict[str, Any]]:
        return parse_json_each_row(self.query_bytes(sql))

    def command(self, sql: str) -> None:
        raise ReadOnlyError("this is a read-only handle: no commands (run the sink or migrate)")

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        raise ReadOnlyError("this is a read-only handle: no inserts")

    def close(self) -> None:
        self._backend.close()

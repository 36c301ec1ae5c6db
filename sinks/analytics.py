"""The named analytics queries: plain SQL files a person can read and reuse.

Each file in ``sinks/sql/analytics/`` is one question. Its first line is ``-- title: ...``, and
it names the database as ClickHouse's own query parameter ``{db:Identifier}``, so the same file
runs unchanged in ``clickhouse-client --param_db=inboxstream --queries-file FILE``. Here the
parameter is filled in as text (the name is validated by the settings), which works the same on
the embedded engine and on a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inboxstream.sinks.clickhouse import ClickHouse

ANALYTICS_DIR = Path(__file__).resolve().parent / "sql" / "analytics"
DB_PARAM = "{db:Identifier}"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TITLE = re.compile(r"^--\s*title:\s*(?P<title>.+)$")

# The order a data team asks them in; files not listed here follow alphabetically.
ORDER = (
    "messages_per_inbox_per_day",
    "crm_reply_rate",
    "thread_length_distribution",
    "top_sender_domains",
    "sync_lag_per_inbox",
    "disconnected_inboxes",
)

# Tables (and views) that `analytics --parquet TABLE` may export.
EXPORTABLE = (
    "email_metadata",
    "bodies",
    "threads",
    "thread_messages",
    "engagements",
    "engagements_current",
    "inbox_status",
    "crm_outbound",
)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    sql: str

    def for_database(self, database: str) -> str:
        if not _IDENTIFIER.match(database):
            raise ValueError(f"not a database name: {database!r}")
        return self.sql.replace(DB_PARAM, database)


def load_queries(directory: Path = ANALYTICS_DIR) -> dict[str, NamedQuery]:
    found: dict[str, NamedQuery] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text()
        match = _TITLE.match(text.splitlines()[0]) if text else None
        if not match:
            raise ValueError(f"{path.name}: the first line must be '-- title: ...'")
        found[path.stem] = NamedQuery(path.stem, match["title"].strip(), text)
    ranked = sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {name: found[name] for name in ranked}


def run(ch: ClickHouse, query: NamedQuery) -> list[dict[str, Any]]:
    return ch.query(query.for_database(ch.database))


def export_parquet(ch: ClickHouse, table: str) -> bytes:
    """One table (or view) as Parquet, read with its dedup semantics (FINAL where it applies)."""
    if table not in EXPORTABLE:
        raise ValueError(f"cannot export {table!r}; one of: {', '.join(EXPORTABLE)}")
    final = "" if table in ("thread_messages", "engagements_current") else " FINAL"
    return ch.query_bytes(f"SELECT * FROM {ch.database}.{table}{final}", "Parquet")

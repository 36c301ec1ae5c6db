"""The columnar insert lands exactly the rows the JSONEachRow text insert landed.

Both paths write the same rows (the generator's mailbox and the hostile corpus, parsed and
mapped as the sink maps them, plus thread and status rows) into two databases of the real
embedded engine; every column of every row must read back the same.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.models import StatusEvent, ThreadEvent
from inboxstream.sinks.clickhouse import EmbeddedClickHouse
from inboxstream.sinks.migrate import migrate
from inboxstream.sinks.rows import body_row, metadata_row, record_of, status_row, thread_row
from tests.helpers.hostile import hostile_corpus


@functools.cache
def _rows() -> dict[str, list[dict[str, Any]]]:
    raws = [m.raw for m in generate_mailbox("owner@demo.example", threads=80)]
    raws += hostile_corpus()[:400]
    tables: dict[str, list[dict[str, Any]]] = {"email_metadata": [], "bodies": []}
    for uid, raw in enumerate(raws, start=1):
        fetched = FetchedMessage(
            "owner@demo.example", "INBOX", "inbox", 9, uid, raw, flags=("\\Seen",), modseq=uid
        )
        message, body = parse_message(fetched)
        tables["email_metadata"].append(metadata_row(record_of(message)))
        tables["bodies"].append(body_row(record_of(body)))
    at = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    tables["threads"] = [
        thread_row(
            record_of(
                ThreadEvent(
                    event_id=f"t{i}",
                    event_type="thread.assigned",
                    inbox_id="owner@demo.example",
                    message_id=f"m{i}@x" if i % 3 else None,
                    thread_id=f"th{i // 4}",
                    merged_thread_ids=[f"old{i}"] if i % 5 == 0 else [],
                    algorithm="rfc5256",
                    occurred_at=at + timedelta(microseconds=i * 777),
                )
            )
        )
        for i in range(200)
    ]
    tables["inbox_status"] = [
        status_row(
            record_of(
                StatusEvent(
                    event_id=f"s{i}",
                    inbox_id="owner@demo.example",
                    state="syncing" if i % 2 else "disconnected",
                    reason=None if i % 2 else "login refused",
                    retriable=None if i % 3 == 0 else bool(i % 2),
                    progress_done=i if i % 2 else None,
                    at=at + timedelta(seconds=i),
                )
            )
        )
        for i in range(50)
    ]
    return tables


def _read(ch: EmbeddedClickHouse, table: str) -> list[dict[str, Any]]:
    return ch.query(f"SELECT * EXCEPT inserted_at FROM {ch.database}.{table} ORDER BY event_id")


@pytest.mark.parametrize("table", ["email_metadata", "bodies", "threads", "inbox_status"])
def test_columnar_rows_equal_text_rows(chdb_path: Path, unique: str, table: str) -> None:
    rows = _rows()[table]
    columnar = EmbeddedClickHouse.open(chdb_path, f"col_{unique}")
    text = EmbeddedClickHouse.open(chdb_path, f"txt_{unique}")
    migrate(columnar)
    migrate(text)
    assert columnar._insert_types(table, rows[0]) is not None  # really the columnar path
    for i in range(0, len(rows), 300):
        columnar.insert(table, rows[i : i + 300])
        text.insert_text(table, rows[i : i + 300])
    got, want = _read(columnar, table), _read(text, table)
    # bodies older than their 7 days are dropped on insert by the TTL, on both paths alike
    assert len(got) == len(want) > len(rows) // 2
    for a, b in zip(got, want, strict=True):
        assert a == b


def test_a_value_that_does_not_fit_is_the_rows_fault(chdb_path: Path, unique: str) -> None:
    """A negative count cannot be a UInt64: BadRowError (the sink dead-letters that row)."""
    from inboxstream.sinks.exceptions import BadRowError

    ch = EmbeddedClickHouse.open(chdb_path, f"bad_{unique}")
    migrate(ch)
    row = {**_rows()["email_metadata"][0], "size": -1}
    with pytest.raises(BadRowError):
        ch.insert("email_metadata", [row])

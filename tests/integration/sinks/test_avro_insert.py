"""The engine's own Avro mapping (sinks/sql/avro/) lands the rows the Python mapping lands.

Events from the generator's mailbox and the hostile corpus (and thread events) are encoded as
the producer and processor encode them; one database is filled the way the sink fills the hot
tables (a container of the values, the projection's SQL, the rows it leaves mapped in
Python), the other by the Python mapping alone. Every column of every row must be equal.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.producers.parse import FetchedMessage, parse_message
from inboxstream.schemas.models import BodyEvent, Event, MessageEvent, ThreadEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.sinks.avro_insert import PROJECTIONS, container
from inboxstream.sinks.clickhouse import EmbeddedClickHouse
from inboxstream.sinks.migrate import migrate
from inboxstream.sinks.tables import ROWS
from tests.helpers.hostile import hostile_corpus

MODELS: dict[str, type[Event]] = {
    "email_metadata": MessageEvent,
    "bodies": BodyEvent,
    "threads": ThreadEvent,
}


@functools.cache
def _events() -> dict[str, list[Event]]:
    raws = [m.raw for m in generate_mailbox("owner@demo.example", threads=80)]
    raws += hostile_corpus()[:400]
    now = datetime.now(UTC)
    out: dict[str, list[Event]] = {"email_metadata": [], "bodies": []}
    for uid, raw in enumerate(raws, start=1):
        fetched = FetchedMessage(
            "owner@demo.example", "INBOX", "inbox", 9, uid, raw, flags=("\\Seen",), modseq=uid
        )
        message, body = parse_message(fetched, now=now - timedelta(minutes=uid))
        out["email_metadata"].append(message)
        out["bodies"].append(body)
    out["threads"] = [
        ThreadEvent(
            event_id=f"t{i}",
            event_type="thread.merged" if i % 7 == 0 else "thread.assigned",
            inbox_id="owner@demo.example",
            message_event_id=f"e{i}" if i % 2 else None,
            message_id=f"m{i}@x" if i % 3 else None,
            thread_id=f"th{i // 4}",
            merged_thread_ids=[f"old{i}", f"older{i}"] if i % 7 == 0 else [],
            root_message_id=f"r{i}@x" if i % 4 else None,
            base_subject="Grüße – pilot" if i % 5 else None,
            algorithm="references" if i % 9 == 0 else "rfc5256",
            occurred_at=now - timedelta(seconds=i, microseconds=i * 777),
        )
        for i in range(300)
    ]
    return out


def _read(ch: EmbeddedClickHouse, table: str) -> list[dict[str, Any]]:
    return ch.query(f"SELECT * EXCEPT inserted_at FROM {ch.database}.{table} ORDER BY event_id")


@pytest.mark.parametrize("table", sorted(PROJECTIONS))
def test_engine_mapping_lands_the_python_rows(chdb_path: Path, unique: str, table: str) -> None:
    model = MODELS[table]
    serde = serde_for(model)
    events = _events()[table]
    values = [serde.encode(e) for e in events]
    # the container holds bare datums: without the registry's wire-format prefix
    start = 5 if serde.framed else 0
    engine = EmbeddedClickHouse.open(chdb_path, f"avro_{unique}")
    python = EmbeddedClickHouse.open(chdb_path, f"py_{unique}")
    migrate(engine)
    migrate(python)
    left_out = 0
    for i in range(0, len(values), 250):
        chunk = values[i : i + 250]
        datums = [v[start:] for v in chunk]
        left = engine.insert_avro(PROJECTIONS[table], container(serde.writer, datums))
        left_out += len(left)
        # what the engine leaves out is mapped in Python, as the sink does
        records = [serde.decode_record(chunk[j], serde.headers()) for j in left]
        engine.insert(table, [ROWS[model](r) for r in records])
        rows = [ROWS[model](serde.decode_record(v, serde.headers())) for v in chunk]
        python.insert(table, rows)
    got, want = _read(engine, table), _read(python, table)
    assert len(got) == len(want) > len(events) // 2
    for a, b in zip(got, want, strict=True):
        assert a == b
    if table == "email_metadata":
        # the hostile corpus has raw headers that are not UTF-8: those went the Python way
        assert left_out > 0


def test_a_container_the_engine_refuses_raises(chdb_path: Path, unique: str) -> None:
    """Corrupt values make the whole container fail (the sink then maps it in Python)."""
    from inboxstream.sinks.exceptions import ClickHouseError

    ch = EmbeddedClickHouse.open(chdb_path, f"bad_{unique}")
    migrate(ch)
    serde = serde_for(ThreadEvent)
    good = serde.encode(_events()["threads"][0])[5 if serde.framed else 0 :]
    with pytest.raises(ClickHouseError):
        ch.insert_avro(PROJECTIONS["threads"], container(serde.writer, [good, b"\xff\x01"]))


def test_the_scratch_file_has_no_name_to_leak(
    chdb_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine reads the container from a scratch file in /dev/shm. A named one outlived
    a sink killed mid-insert (memory nobody frees); while the engine reads it now, the
    directory shows nothing new, and the rows land."""
    import os

    from inboxstream.sinks import clickhouse

    ch = EmbeddedClickHouse.open(chdb_path, f"scratch_{unique}")
    migrate(ch)
    serde = serde_for(ThreadEvent)
    events = _events()["threads"][:50]
    datums = [serde.encode(e)[5 if serde.framed else 0 :] for e in events]
    before = set(os.listdir(clickhouse._SCRATCH))
    seen: list[set[str]] = []
    run = ch._run

    def watching(sql: str, *args: Any, **kwargs: Any) -> Any:
        if "Avro" in sql:
            seen.append(set(os.listdir(clickhouse._SCRATCH)) - before)
        return run(sql, *args, **kwargs)

    monkeypatch.setattr(ch, "_run", watching)
    ch.insert_avro(PROJECTIONS["threads"], container(serde.writer, datums))
    assert seen and all(not new for new in seen)
    assert len(_read(ch, "threads")) == len(events)

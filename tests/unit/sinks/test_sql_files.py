"""The SQL a user reads and reuses: migrations and named analytics queries are well-formed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.sinks import analytics
from inboxstream.sinks.endpoint import is_read_only
from inboxstream.sinks.migrate import load_migrations


def test_migrations_are_versioned_rerunnable_and_explained() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    for m in migrations:
        for statement in m.statements:
            assert "IF NOT EXISTS" in statement, statement[:80]
            assert "{db}" in statement


def test_every_table_is_idempotent_by_construction() -> None:
    tables = [s for m in load_migrations() for s in m.statements if s.startswith("CREATE TABLE")]
    assert len(tables) == 6
    assert all("ReplacingMergeTree(version)" in s for s in tables)


def test_named_queries_have_titles_and_take_the_database_as_a_parameter() -> None:
    queries = analytics.load_queries()
    assert list(queries)[:6] == list(analytics.ORDER)
    for q in queries.values():
        assert q.title and analytics.DB_PARAM in q.sql
        sql = q.for_database("my_db")
        assert "{db" not in sql and "my_db." in sql
        assert is_read_only(sql)  # the sink's endpoint will run it


@pytest.mark.parametrize("bad", ["x; DROP DATABASE y", "1db", "a.b", ""])
def test_a_database_name_is_an_identifier(bad: str) -> None:
    q = next(iter(analytics.load_queries().values()))
    with pytest.raises(ValueError):
        q.for_database(bad)


def test_only_known_tables_export() -> None:
    with pytest.raises(ValueError):
        analytics.export_parquet(None, "system.users")  # type: ignore[arg-type]


@given(st.text(), st.text())
def test_the_endpoint_never_accepts_a_second_statement(a: str, b: str) -> None:
    assert not is_read_only(f"SELECT {a};{b};")


@given(st.sampled_from(["SELECT 1", "with x as (select 1) select * from x", "SHOW TABLES"]))
def test_reads_are_accepted_with_comments_before_them(sql: str) -> None:
    assert is_read_only(f"-- a note\n/* another */\n{sql};")
    assert not is_read_only(f"-- a note\nINSERT INTO t {sql}")

"""The decision on the parser's canonical form (sinks/readonly.py), without an engine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.sinks.readonly import READ_KINDS, refusal, sql_string


def test_reads_pass_and_everything_else_is_refused() -> None:
    assert refusal("SELECT 1") is None
    assert refusal("WITH 1 AS x SELECT x") is None
    assert refusal("SHOW TABLES FROM d") is None
    assert refusal("DESCRIBE TABLE d.t") is None
    assert refusal(None) == "not one SQL statement ClickHouse can parse"
    assert "not a read" in (refusal("INSERT INTO t FORMAT Values") or "")
    assert "not a read" in (refusal("SET readonly = 0") or "")
    assert "not a read" in (refusal("") or "")
    assert "INTO OUTFILE" in (refusal("SELECT 1 INTO OUTFILE 'x' FORMAT CSV") or "")
    assert "INTO OUTFILE" in (refusal("SELECT 1 UNION ALL SELECT 2 INTO  OUTFILE 'z'") or "")


def test_quoted_text_never_counts_as_a_clause() -> None:
    assert refusal("SELECT 'INTO OUTFILE' AS x") is None
    assert refusal("SELECT `INTO OUTFILE` FROM t") is None
    assert refusal("SELECT 'it\\'s INTO OUTFILE' AS x") is None


@given(st.text())
def test_any_text_is_one_string_literal(text: str) -> None:
    literal = sql_string(text)
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    # every quote inside is escaped, so the literal cannot end early
    i = 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 2
            continue
        assert inner[i] != "'"
        i += 1


@given(st.sampled_from(READ_KINDS), st.text(alphabet="abc 123", max_size=20))
def test_every_read_kind_is_accepted(kind: str, rest: str) -> None:
    assert refusal(f"{kind} {rest}") is None

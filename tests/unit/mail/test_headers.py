"""The fast Date reading gives the stdlib's answer wherever it answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.mail.headers import parse_date, parse_date_stdlib
from tests.helpers.dates import DateFields, date_fields


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["", "Mon, ", "Thu, ", "Xyz, "]), date_fields)
def test_fast_date_is_the_stdlibs(dow: str, d: DateFields) -> None:
    text = f"{dow}{d.day} {d.month} {d.year:04d} {d.clock} {d.zone}"
    got, want = parse_date(text), parse_date_stdlib(text)
    assert got == want
    if want is not None:
        assert got is not None and got.utcoffset() == want.utcoffset()


@given(st.text(max_size=60))
def test_any_text_reads_as_the_stdlib_reads_it(text: str) -> None:
    assert parse_date(text) == parse_date_stdlib(text) or not text

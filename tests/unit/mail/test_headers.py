"""The fast Date reading gives the stdlib's answer wherever it answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.mail.headers import parse_date, parse_date_stdlib

_MONTHS = ["Jan", "feb", "MAR", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(["", "Mon, ", "Thu, ", "Xyz, "]),
    st.integers(0, 39),
    st.sampled_from([*_MONTHS, "Foo"]),
    st.integers(0, 10050),
    st.integers(0, 29),
    st.integers(0, 65),
    st.integers(0, 65),
    st.sampled_from("+-"),
    st.integers(0, 30),
    st.integers(0, 59),
)
def test_fast_date_is_the_stdlibs(
    dow: str,
    day: int,
    month: str,
    year: int,
    hh: int,
    mm: int,
    ss: int,
    sign: str,
    zh: int,
    zm: int,
) -> None:
    text = f"{dow}{day} {month} {year:04d} {hh:02d}:{mm:02d}:{ss:02d} {sign}{zh:02d}{zm:02d}"
    got, want = parse_date(text), parse_date_stdlib(text)
    assert got == want
    if want is not None:
        assert got is not None and got.utcoffset() == want.utcoffset()


@given(st.text(max_size=60))
def test_any_text_reads_as_the_stdlib_reads_it(text: str) -> None:
    assert parse_date(text) == parse_date_stdlib(text) or not text

"""Date fields for the property tests of the fast date readers (IMAP INTERNALDATE, RFC 5322
Date): every field drawn a little past its range, so the out-of-range answers are compared
too, and a month name the readers must refuse."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

MONTHS = ["Jan", "feb", "MAR", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass(frozen=True)
class DateFields:
    day: int
    month: str
    year: int
    hh: int
    mm: int
    ss: int
    sign: str
    zh: int
    zm: int

    @property
    def clock(self) -> str:
        return f"{self.hh:02d}:{self.mm:02d}:{self.ss:02d}"

    @property
    def zone(self) -> str:
        return f"{self.sign}{self.zh:02d}{self.zm:02d}"


date_fields = st.builds(
    DateFields,
    day=st.integers(0, 39),
    month=st.sampled_from([*MONTHS, "Foo"]),
    year=st.integers(0, 10050),
    hh=st.integers(0, 29),
    mm=st.integers(0, 65),
    ss=st.integers(0, 65),
    sign=st.sampled_from("+-"),
    zh=st.integers(0, 30),
    zm=st.integers(0, 59),
)

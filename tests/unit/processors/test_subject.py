"""RFC 5256 base subject extraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.processors.subject import base_subject, is_reply_or_forward


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Hello", "hello"),
        ("Re: Hello", "hello"),
        ("RE: re: Fwd: FW: Hello", "hello"),
        ("Re[2]: Hello", "hello"),
        ("Re [list]: Hello", "hello"),
        ("[list] Re: [other] Hello", "hello"),
        ("Hello (fwd)", "hello"),
        ("Hello (fwd) (FWD)  ", "hello"),
        ("[fwd: Re: Hello]", "hello"),
        ("[only a tag]", "[only a tag]"),
        ("  many   \t spaces  ", "many spaces"),
        ("=?utf-8?q?Re:_Caf=C3=A9?=", "café"),
        ("Re: =?iso-8859-1?q?Caf=E9?= plans", "café plans"),
        ("Re:", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_base_subject(subject: str | None, expected: str) -> None:
    assert base_subject(subject) == expected


def test_reply_or_forward_detection() -> None:
    assert is_reply_or_forward("Re: x") and is_reply_or_forward("x (fwd)")
    assert not is_reply_or_forward("Regarding x") and not is_reply_or_forward(None)


@given(st.text(max_size=60))
def test_base_subject_is_idempotent_and_never_raises(subject: str) -> None:
    once = base_subject(subject)
    assert base_subject(once) == once


@given(st.text(alphabet="abc XYZ", min_size=1, max_size=20).filter(str.strip))
def test_decorations_do_not_change_the_base(core: str) -> None:
    for decorated in (f"Re: {core}", f"Fwd: [tag] {core} (fwd)", f"[fwd: {core}]"):
        assert base_subject(decorated) == base_subject(core)

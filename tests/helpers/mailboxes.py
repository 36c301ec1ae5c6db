"""Generated mailboxes of tricky threading cases, shared by the unit and integration tests.

``tricky_mailbox`` returns messages in append order with a label each, and the grouping RFC 5256
REFERENCES must produce (as labels), so offline, stream and Dovecot answers can all be checked
against one expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import strategies as st

from inboxstream.processors.jwz import ThreadInput

BASE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Mail:
    label: str
    raw: bytes
    date: datetime


def _mail(
    label: str,
    minutes: int,
    *,
    mid: str | None = "auto",
    subject: str | None = None,
    refs: str | None = None,
    irt: str | None = None,
    extra: str = "",
) -> Mail:
    date = BASE + timedelta(minutes=minutes)
    lines = [f"From: Person {label} <{label}@example.test>", "To: owner@inboxstream.test"]
    if mid == "auto":
        mid = f"<{label}@tricky.test>"
    if mid is not None:
        lines.append(f"Message-ID: {mid}")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    if refs is not None:
        lines.append(f"References: {refs}")
    if irt is not None:
        lines.append(f"In-Reply-To: {irt}")
    lines.append(f"Date: {format_datetime(date)}")
    lines.append("MIME-Version: 1.0")
    lines.append("Content-Type: text/plain; charset=utf-8")
    raw = "\r\n".join(lines) + "\r\n" + extra + "\r\nBody of " + label + "\r\n"
    return Mail(label, raw.encode(), date)


def tricky_mailbox() -> tuple[list[Mail], list[set[str]], list[set[str]]]:
    """(mails in append order, rfc5256 grouping, references-only grouping)."""
    mails = [
        # a plain conversation
        _mail("a1", 0, subject="Kickoff"),
        _mail("a2", 1, subject="Re: Kickoff", refs="<a1@tricky.test>", irt="<a1@tricky.test>"),
        _mail("a3", 2, subject="Re: Kickoff", refs="<a1@tricky.test> <a2@tricky.test>"),
        # two replies to a parent we never see: one placeholder root with two children
        _mail("b2", 3, subject="Re: Budget 2026", refs="<b1@tricky.test>"),
        _mail("b3", 4, subject="RE: Budget 2026", irt="<b1@tricky.test>"),
        # a late parent: replies first, the parent (dated earliest) appended last below
        _mail("c2", 5, subject="Re: Offsite", refs="<c1@tricky.test>"),
        _mail("c3", 6, subject="Re: Offsite", refs="<c1@tricky.test> <c2@tricky.test>"),
        # a reference cycle
        _mail("d1", 7, subject="Loop one", refs="<d2@tricky.test>"),
        _mail("d2", 8, subject="Loop two", refs="<d1@tricky.test>"),
        # a duplicated Message-ID: the first carrier keeps it, the reply joins the first
        _mail("e1", 9, mid="<dup@tricky.test>", subject="Invoice 7"),
        _mail("e2", 10, subject="Re: Invoice 7", refs="<dup@tricky.test>"),
        _mail("e3", 11, mid="<dup@tricky.test>", subject="Unrelated duplicate"),
        # merged by base subject only ([tag], Re:, Fwd:, (fwd), [fwd: ...])
        _mail("f1", 12, subject="Quarterly report"),
        _mail("f2", 13, subject="Re: [team] Quarterly report"),
        _mail("f3", 14, subject="Fwd: Quarterly report (fwd)"),
        _mail("f4", 15, subject="[fwd: Quarterly report]"),
        # encoded words
        _mail("g1", 16, subject="=?utf-8?q?Caf=C3=A9_plans?="),
        _mail("g2", 17, subject="Re: =?iso-8859-1?q?Caf=E9?= plans"),
        # no Message-ID at all
        _mail("h1", 18, mid=None, subject="Lonely note"),
        _mail("h2", 19, mid=None, subject="Re: Lonely note"),
        _mail("h3", 20, mid=None),
        # malformed reference lists still yield their bracketed ids
        _mail("i1", 21, subject="Specs"),
        _mail("i2", 22, subject="Re: Specs v2", refs="junk <i1@tricky.test> <broken"),
        # a message that references itself
        _mail("j1", 23, subject="Self", refs="<j1@tricky.test>"),
        # roots without subject never merge by subject
        _mail("k1", 24),
        _mail("k2", 25, subject=""),
        _mail("c1", -60, subject="Offsite"),
    ]
    # the two algorithms agree except on f..h, which only subject merging joins
    head = [
        {"a1", "a2", "a3"},
        {"b2", "b3"},
        {"c1", "c2", "c3"},
        {"d1", "d2"},
        {"e1", "e2"},
        {"e3"},
    ]
    tail = [{"i1", "i2"}, {"j1"}, {"k1"}, {"k2"}]
    rfc = [*head, {"f1", "f2", "f3", "f4"}, {"g1", "g2"}, {"h1", "h2"}, {"h3"}, *tail]
    refs_only = [
        *head,
        *({x} for x in ("f1", "f2", "f3", "f4", "g1", "g2", "h1", "h2", "h3")),
        *tail,
    ]
    return mails, rfc, refs_only


def to_mbox(mails: list[bytes], garbage: bool = False) -> bytes:
    """mbox (mboxrd quoting of body "From " lines) of raw messages."""
    out = []
    for raw in mails:
        body = raw.replace(b"\r\n", b"\n")
        lines = [
            b">" + ln if ln.lstrip(b">").startswith(b"From ") else ln for ln in body.split(b"\n")
        ]
        out.append(b"From MAILER-DAEMON Mon Mar  2 09:00:00 2026\n" + b"\n".join(lines) + b"\n")
    return b"".join(out)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def forests(draw: st.DrawFn) -> list[ThreadInput[int]]:
    """Consistent conversations with unique ids: each message's references are a non-empty
    suffix of its real ancestor path (it always names its parent, RFC 5322 3.6.4); some
    ancestors are never seen (placeholders); distinct dates.

    A reply that names no parent at all while others name one for it is not consistent: RFC
    5256 (1)(C) lets the last-seen message decide, so order matters there by design.
    """
    n = draw(st.integers(1, 25))
    parents: dict[str, str | None] = {}
    ids = [f"m{i}@t" for i in range(n)]
    ghosts = [f"g{i}@t" for i in range(4)]
    for g in ghosts:
        parents[g] = None
    for i, mid in enumerate(ids):
        options = [None, *ghosts, *ids[:i]]
        parents[mid] = draw(st.sampled_from(options))
    out = []
    for i, mid in enumerate(ids):
        path: list[str] = []
        node = parents[mid]
        while node is not None:
            path.insert(0, node)
            node = parents[node]
        keep = draw(st.integers(min(1, len(path)), len(path)))
        refs = path[len(path) - keep :]
        irt_only = draw(st.booleans()) and refs
        subject = draw(st.sampled_from([None, "", "alpha", "Re: alpha", "beta", "[x] beta"]))
        out.append(
            ThreadInput(
                i,
                mid,
                () if irt_only else tuple(refs),
                (refs[-1],) if refs else (),
                subject,
                T0 + timedelta(minutes=draw(st.integers(0, 10_000)) * 100 + i),
            )
        )
    return out

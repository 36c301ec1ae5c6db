from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.producers.parse import (
    ATTACHMENT_LOG_LIMIT,
    FetchedMessage,
    decode_text,
    event_id,
    parse_message,
    parse_msg_ids,
    split_header_block,
    synthetic_message_id,
)


def fetched(raw: bytes, **kw: object) -> FetchedMessage:
    base: dict[str, object] = dict(
        inbox_id="i", folder="INBOX", folder_role="inbox", uidvalidity=1, uid=1, raw=raw
    )
    base.update(kw)
    return FetchedMessage(**base)  # type: ignore[arg-type]


RICH = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.de>\r\n"
    b'To: a@b.c, "B, Jr." <b@c.d>\r\n'
    b"Cc: c@d.e\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= und mehr\r\n"
    b"Message-ID: <abc@x>\r\n"
    b"References: <r1@x>\r\n <r2@x>\r\n"
    b"In-Reply-To: <r2@x>\r\n"
    b"Date: Mon, 2 Nov 2026 10:00:00 +0100\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    b"--XX\r\nContent-Type: application/pdf; name=a.pdf\r\n"
    b"Content-Disposition: attachment; filename=a.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--XX--\r\n"
)


def test_envelope_and_headers() -> None:
    m, b = parse_message(fetched(RICH, size=len(RICH)))
    assert m.message_id == "abc@x" and not m.message_id_synthetic
    assert m.from_ is not None and m.from_.name == "Jürgen" and m.from_.email == "j@x.de"
    assert [a.email for a in m.to] == ["a@b.c", "b@c.d"]
    assert m.to[1].name == "B, Jr."
    assert [a.email for a in m.cc] == ["c@d.e"]
    assert m.subject == "Grüße und mehr"
    assert m.references == ["r1@x", "r2@x"]
    assert m.in_reply_to == ["r2@x"]
    assert m.date == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert m.has_attachments and m.parse_error is None
    assert m.raw_headers.startswith(b"From:") and m.raw_headers.endswith(b"boundary=XX\r\n")
    assert b.text is not None and b.text.strip() == "hello"
    assert b.attachments[0].filename == "a.pdf" and b.attachments[0].size == 5
    assert b.event_id == m.event_id


def test_missing_message_id_gets_a_deterministic_synthetic_one() -> None:
    raw = b"From: a@b.c\r\nSubject: hi\r\n\r\nbody"
    m1, _ = parse_message(fetched(raw, uid=1))
    m2, _ = parse_message(fetched(raw, uid=2, folder="Archive"))
    assert m1.message_id_synthetic
    assert m1.message_id == m2.message_id == synthetic_message_id(split_header_block(raw))


def test_attachments_not_logged_when_off_or_50mb_or_more() -> None:
    _, off = parse_message(fetched(RICH), log_attachments=False)
    assert off.attachments == [] and not off.attachments_logged
    assert off.attachments_skipped_reason == "attachment logging is off for this inbox"
    _, big = parse_message(fetched(RICH, size=ATTACHMENT_LOG_LIMIT))
    assert big.attachments == [] and "50 MB" in (big.attachments_skipped_reason or "")
    _, small = parse_message(fetched(RICH, size=ATTACHMENT_LOG_LIMIT - 1))
    assert len(small.attachments) == 1


def test_unknown_charset_and_bad_date_fall_back() -> None:
    raw = (
        b"From: x@y.z\r\nMessage-ID: <c@x>\r\nSubject: =?x-nope?q?Gr=FC=DFe?=\r\n"
        b"Date: yesterday-ish\r\nContent-Type: text/plain; charset=x-nope\r\n\r\nGr\xfc\xdfe\r\n"
    )
    m, b = parse_message(fetched(raw))
    assert m.subject == "Grüße"
    assert m.date is None
    assert b.text is not None and b.text.startswith("Grüße")


def test_message_ids_are_parsed_leniently() -> None:
    assert parse_msg_ids("<a@b> <c@d>\r\n\t<a@b>") == ["a@b", "c@d"]
    assert parse_msg_ids("a@b, c@d") == ["a@b", "c@d"]
    assert parse_msg_ids("<a@b>garbage<c@d>") == ["a@b", "c@d"]
    assert parse_msg_ids("") == [] and parse_msg_ids(None) == []
    assert parse_msg_ids("no ids at all") == []


def test_event_id_is_stable_and_specific() -> None:
    a = event_id("i", "INBOX", 1, 5)
    assert a == event_id("i", "INBOX", 1, 5)
    assert a != event_id("i", "INBOX", 2, 5)
    assert a != event_id("i", "Sent", 1, 5)
    # A flag change is its own event, distinct for every modseq.
    assert event_id("i", "INBOX", 1, 5, "message.flags", 9) != event_id(
        "i", "INBOX", 1, 5, "message.flags", 10
    )


def test_decode_text_mixed_words() -> None:
    assert decode_text("Re: =?utf-8?b?w6Q=?= ok") == "Re: ä ok"
    assert decode_text(None) is None


def test_every_generated_demo_message_parses_cleanly() -> None:
    for mail in generate_mailbox("o@demo.example", threads=30):
        m, _ = parse_message(fetched(mail.raw))
        if mail.message_id is not None:
            assert m.message_id == mail.message_id


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    m, b = parse_message(fetched(raw))
    assert m.message_id
    assert b.message_id == m.message_id


header_names = st.sampled_from(
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "References",
        "In-Reply-To",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(header_names, st.binary(max_size=80)), max_size=12), st.binary(max_size=500)
)
def test_hostile_headers_never_raise(headers: list[tuple[str, bytes]], body: bytes) -> None:
    raw = b"".join(n.encode() + b": " + v.replace(b"\n", b" ") + b"\r\n" for n, v in headers)
    m, _ = parse_message(fetched(raw + b"\r\n" + body, size=len(raw)))
    assert m.size == len(raw)


@given(
    st.text(),
    st.text(st.characters(exclude_categories=())),  # surrogates included
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**32 - 1),
)
def test_event_id_never_raises_and_is_deterministic(
    inbox: str, folder: str, uidvalidity: int, uid: int
) -> None:
    """Any folder name a server sends, lone surrogates included, gives one stable key."""
    a = event_id(inbox, folder, uidvalidity, uid)
    assert a == event_id(inbox, folder, uidvalidity, uid)
    assert len(a) == 32
    assert event_id(inbox, "bad\udcff", uidvalidity, uid) != event_id(
        inbox, "bad", uidvalidity, uid
    )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b":", b" ", b"\r", b"\n", b"\r\n", b"\r\n\r\n"]), max_size=40)
)
def test_header_block_split_is_the_regex_split(pieces: list[bytes]) -> None:
    """The find-based split gives what the regex alone gives, lone CRs and LFs included."""
    import re

    raw = b"".join(pieces)
    match = re.compile(rb"\r?\n\r?\n").search(raw)
    want = raw[: match.start()] + b"\r\n" if match else raw
    assert split_header_block(raw) == want

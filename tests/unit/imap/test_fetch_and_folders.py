from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.imap.connection import check_greeting
from inboxstream.imap.fetch import parse_fetch_lines, parse_internaldate, search_uids
from inboxstream.imap.folders import Folder, assign_roles, decode_mutf7, parse_list_lines
from tests.helpers.dates import DateFields, date_fields


def test_fetch_lines_with_literal_and_trailing_attributes() -> None:
    lines: list[bytes | bytearray] = [
        b'1 FETCH (UID 10 FLAGS (\\Seen \\Answered) INTERNALDATE "22-Nov-2026 10:00:00 +0100" '
        b"RFC822.SIZE 5 MODSEQ (77) BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"2 FETCH (BODY[] {3}",
        bytearray(b"abc"),
        b" UID 11 FLAGS ())",
        b"3 FETCH (UID 12 FLAGS (\\Deleted))",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    items = parse_fetch_lines(lines)
    assert [i.uid for i in items] == [10, 11, 12]
    first = items[0]
    assert first.raw == b"hello" and first.size == 5 and first.modseq == 77
    assert first.flags == ("\\Seen", "\\Answered")
    assert first.internal_date == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    assert items[1].raw == b"abc" and items[1].flags == ()
    assert items[2].raw is None and items[2].flags == ("\\Deleted",)


def test_internaldate_junk_is_none() -> None:
    assert parse_internaldate(b"garbage") is None
    tz = timezone(timedelta(hours=-5))
    assert parse_internaldate(b" 1-Jan-2026 00:00:00 -0500") == datetime(2026, 1, 1, tzinfo=tz)


def test_list_parsing_quoting_literals_and_mutf7() -> None:
    lines: list[bytes | bytearray] = [
        b'LIST (\\HasNoChildren) "/" INBOX',
        b'(\\HasNoChildren \\Sent) "/" "Sent"',
        b'LIST (\\HasNoChildren) "." "Sent Items"',
        b'LIST (\\Noselect \\HasChildren) "/" "Projects"',
        b'LIST () "/" "Entw&APw-rfe"',
        b'LIST () "/" {9}',
        b'quote "q"',
        b'LIST () NIL "Odd \\"name\\""',
        b"List completed.",
    ]
    folders = parse_list_lines(lines)
    names = [f.name for f in folders]
    assert names == [
        "INBOX",
        "Sent",
        "Sent Items",
        "Projects",
        "Entwürfe",
        'quote "q"',
        'Odd "name"',
    ]
    assert folders[4].wire_name == "Entw&APw-rfe"
    assert not folders[3].selectable
    assert folders[6].delimiter is None


def test_sent_role_prefers_special_use_then_first_named_sent() -> None:
    def f(name: str, *flags: str) -> Folder:
        return Folder(name, decode_mutf7(name), frozenset(flags), "/")

    with_special = [f("INBOX"), f("Sent Items"), f("Outbox", "\\Sent"), f("Junk", "\\Junk")]
    assert assign_roles(with_special) == {
        "INBOX": "inbox",
        "Sent Items": "other",
        "Outbox": "sent",
        "Junk": "other",
    }
    without = [f("INBOX"), f("Archive"), f("Old SENT mail"), f("Sent Items")]
    roles = assign_roles(without)
    assert roles["Old SENT mail"] == "sent" and roles["Sent Items"] == "other"
    assert "sent" not in assign_roles([f("INBOX"), f("Drafts")]).values()
    # A \Noselect folder is never chosen, even with the attribute.
    assert "Sent" not in assign_roles([f("INBOX"), f("Sent", "\\Noselect", "\\Sent")])


def test_virtual_folders_are_not_synced() -> None:
    """Gmail's labels-as-folders and Dovecot/Exchange virtual folders show messages stored
    elsewhere: \\All, \\Flagged and \\Important folders get no role; real special-use
    folders (\\Archive, \\Junk, \\Trash) and INBOX always do."""

    def f(name: str, *flags: str) -> Folder:
        return Folder(name, name, frozenset(flags), "/")

    gmail = [
        f("INBOX"),
        f("[Gmail]/All Mail", "\\HasNoChildren", "\\All"),
        f("[Gmail]/Starred", "\\Flagged"),
        f("[Gmail]/Important", "\\important"),
        f("[Gmail]/Sent Mail", "\\Sent"),
        f("[Gmail]/Spam", "\\Junk"),
        f("[Gmail]/Trash", "\\Trash"),
        f("Clients/ACME"),
        f("Virtual/All", "\\All"),
        f("Archive", "\\Archive"),
    ]
    assert assign_roles(gmail) == {
        "INBOX": "inbox",
        "[Gmail]/Sent Mail": "sent",
        "[Gmail]/Spam": "other",
        "[Gmail]/Trash": "other",
        "Clients/ACME": "other",
        "Archive": "other",
    }
    # INBOX is synced even on a server that flags it oddly
    assert assign_roles([f("INBOX", "\\Flagged")]) == {"INBOX": "inbox"}


def test_mutf7_edge_cases() -> None:
    assert decode_mutf7("&-") == "&"
    assert decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert decode_mutf7("broken&AAA") == "broken&AAA"


def test_greeting_checks() -> None:
    assert check_greeting(b"OK [CAPABILITY IMAP4rev1] Dovecot ready.", 993) is None
    assert "POP3" in (check_greeting(b"+OK POP3 server ready", 1143) or "")
    assert "POP3" in (check_greeting(b"OK IMAP ready", 995) or "")
    courier = b"OK [CAPABILITY IMAP4rev1 UIDPLUS] Courier-IMAP ready. Copyright 1998-2018"
    assert "Courier-IMAP is not supported" in (check_greeting(courier, 993) or "")
    assert "unexpected greeting" in (check_greeting(b"220 smtp.example ESMTP", 993) or "")


def test_search_uids_reads_both_response_styles() -> None:
    assert search_uids([b"1 2 10"]) == [1, 2, 10]
    assert search_uids([b"SEARCH 4"]) == [4]
    assert search_uids([b"", b"SEARCH"]) == []


@settings(max_examples=500, deadline=None)
@given(date_fields, st.sampled_from(["", " "]))
def test_internaldate_fast_read_is_strptime(d: DateFields, pad: str) -> None:
    """The regex read gives strptime's answer (instant and zone), junk included."""
    text = f"{pad}{d.day}-{d.month}-{d.year:04d} {d.clock} {d.zone}"
    try:
        want = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        want = None
    got = parse_internaldate(text.encode())
    assert got == want
    if want is not None:
        assert got is not None and got.utcoffset() == want.utcoffset()


def test_gmail_message_id_and_labels_are_read_from_fetch() -> None:
    from inboxstream.imap.fetch import parse_gm_labels

    lines: list[bytes | bytearray] = [
        b'1 FETCH (UID 7 X-GM-MSGID 18446744073709551615 X-GM-LABELS (\\Inbox "Two words" '
        b'"say \\"hi\\"" &AMk-t&AOk- "\\\\Important") BODY[] {4}',
        b"abcd",
        b")",
        b"2 FETCH (UID 8 X-GM-LABELS () BODY[] {1}",
        b"x",
        b")",
    ]
    first, second = parse_fetch_lines(lines)
    assert first.gm_msgid == "18446744073709551615"  # unsigned 64 bits: kept as text
    assert first.gm_labels == ("\\Inbox", "Two words", 'say "hi"', "Été", "\\Important")
    assert (second.gm_msgid, second.gm_labels) == (None, ())
    assert parse_gm_labels(b"") == ()


_flag = st.sampled_from(["\\Seen", "\\Recent", "\\Answered", "$Forwarded", "Junk", "\\*", "5"])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 2**32 - 1),
    st.lists(_flag, max_size=4),
    st.sampled_from(['"05-Dec-2026 06:13:47 +0000"', '" 1-Jan-2027 00:00:00 -0130"', '"junk"']),
    st.integers(0, 2**40),
    st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    st.sampled_from([b")", b" X-GM-MSGID 7)", b""]),
)
def test_backfill_line_fast_read_is_the_general_read(
    uid: int, flags: list[str], idate: str, size: int, modseq: int | None, tail: bytes
) -> None:
    """The one-regex read of the backfill's own FETCH layout gives what the attribute-by-
    attribute reader gives (and lines it does not fit, such as a tail with more attributes,
    still reach that reader)."""
    from inboxstream.imap import fetch

    line = (
        f"9 FETCH (UID {uid} FLAGS ({' '.join(flags)}) INTERNALDATE {idate} RFC822.SIZE {size}"
        + ("" if modseq is None else f" MODSEQ ({modseq})")
        + " BODY[] {3}"
    ).encode()
    got = parse_fetch_lines([line, bytearray(b"abc"), tail, b"A1 OK"])
    assert got == [fetch._meta(line + b" " + tail, 9, b"abc")]

"""On Gmail one message is in several folders (labels): its copies share one event identity
(from X-GM-MSGID) and one role (from the labels); elsewhere every folder copy is its own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.producers.parse import FetchedMessage, parse_records

RAW = b"From: a@x.example\r\nSubject: s\r\nMessage-ID: <m@x.example>\r\n\r\nbody\r\n"


def copy(folder: str, uid: int, role: str = "other", **gm: object) -> FetchedMessage:
    return FetchedMessage("pat", folder, role, 3, uid, RAW, **gm)  # type: ignore[arg-type]


def test_copies_of_a_gmail_message_are_one_event() -> None:
    labels = ("\\Inbox", "Work")
    inbox, _ = parse_records(copy("INBOX", 5, "inbox", gm_msgid="42", gm_labels=labels))
    work, work_body = parse_records(copy("Work", 9, gm_msgid="42", gm_labels=labels))
    assert inbox["event_id"] == work["event_id"] == work_body["event_id"]
    assert inbox["gm_msgid"] == work["gm_msgid"] == "42"
    assert work["gm_labels"] == ["\\Inbox", "Work"]
    assert work["folder_role"] == inbox["folder_role"] == "inbox"
    sent, _ = parse_records(copy("Work", 10, gm_msgid="43", gm_labels=("\\Sent", "Work")))
    assert sent["folder_role"] == "sent" and sent["event_id"] != work["event_id"]


def test_without_x_gm_ext_1_every_folder_copy_is_its_own_event() -> None:
    a, _ = parse_records(copy("INBOX", 5, "inbox"))
    b, _ = parse_records(copy("Archive", 5))
    assert a["event_id"] != b["event_id"]
    assert (a["gm_msgid"], a["gm_labels"], b["folder_role"]) == (None, [], "other")


@given(st.text(min_size=1, max_size=30), st.integers(1, 10**6), st.integers(1, 10**6))
def test_gmail_identity_ignores_folder_and_uid(folder: str, uid1: int, uid2: int) -> None:
    one, _ = parse_records(copy(folder, uid1, gm_msgid="7"))
    two, _ = parse_records(copy("INBOX", uid2, "inbox", gm_msgid="7"))
    assert one["event_id"] == two["event_id"]

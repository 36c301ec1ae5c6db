"""Pure parts of sending: address validation, Message-IDs, composition, the sent folder."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.imap.folders import Folder
from inboxstream.send.sender import (
    MAX_MESSAGE_BYTES,
    AttachmentFile,
    Draft,
    Mailbox,
    NoSentFolderError,
    choose_sent_folder,
    compose,
    message_id_for,
    outbound_event,
    parse_mailbox,
)
from inboxstream.send.smtp import InvalidAddressError, InvalidMessageError, MessageTooLargeError

_atom = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=20
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
SENDER = Mailbox("alice@inboxstream.test", "Alice")


@given(
    local=st.lists(_atom, min_size=1, max_size=3), labels=st.lists(_label, min_size=2, max_size=4)
)
def test_valid_addresses_round_trip(local: list[str], labels: list[str]) -> None:
    addr = ".".join(local) + "@" + ".".join(labels)
    if len(".".join(local)) > 64:
        with pytest.raises(InvalidAddressError):
            parse_mailbox(addr)
        return
    box = parse_mailbox(f"Some One <{addr}>")
    assert box.email.split("@")[0] == ".".join(local)
    assert box.name == "Some One"
    assert parse_mailbox(addr).email == box.email


@given(st.text(max_size=40), st.sampled_from(["\r", "\n", "\r\n", "\0"]))
def test_control_characters_are_never_accepted(text: str, ctl: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_mailbox(f"a{ctl}{text}@inboxstream.test")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "a@b",
        "a@@b.test",
        "a b@c.test",
        "a@-x.test",
        ".a@b.test",
        "a..b@c.test",
        "a@b_c.test",
        "<>",
        "Name <>",
        f"{'x' * 65}@b.test",
    ],
)
def test_invalid_addresses(bad: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_mailbox(bad)


def test_quoted_display_name_and_unicode_domain() -> None:
    box = parse_mailbox('"Doe, Jane" <jane@bücher.example>')
    assert box.name == "Doe, Jane"
    assert box.email == "jane@xn--bcher-kva.example"


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_message_id_is_deterministic_per_inbox_and_key(inbox: str, key: str) -> None:
    first = message_id_for(inbox, key, "inboxstream.test")
    assert first == message_id_for(inbox, key, "inboxstream.test")
    assert first != message_id_for(inbox, key + "x", "inboxstream.test")
    assert first != message_id_for(inbox + "x", key, "inboxstream.test")
    assert first.endswith("@inboxstream.test")
    parse_mailbox(first)  # a valid addr-spec, so it is a valid msg-id between brackets


def test_compose_headers_body_attachment(tmp_path: Path) -> None:
    att = tmp_path / "notes.txt"
    att.write_text("hello\n")
    draft = Draft(
        to=["Bob <bob@inboxstream.test>"],
        cc=["carol@inboxstream.test"],
        bcc=["dave@inboxstream.test", "BOB@inboxstream.test"],
        subject="Grüße — numbers",
        text="Body text\n",
        html="<p>Body</p>",
        attachments=[AttachmentFile(att)],
        in_reply_to="<orig@x.test>",
        references=["root@x.test", "<orig@x.test>"],
    )
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    composed = compose(draft, SENDER, "crm.abc@inboxstream.test", date=when)
    assert b"\r\n" in composed.raw and b"\n" not in composed.raw.replace(b"\r\n", b"")
    msg = message_from_bytes(composed.raw, policy=default_policy)
    assert msg["Message-ID"] == "<crm.abc@inboxstream.test>"
    assert msg["From"] == "Alice <alice@inboxstream.test>"
    assert msg["Subject"] == "Grüße — numbers"
    assert msg["Bcc"] is None  # blind copies travel on the envelope only
    assert msg["In-Reply-To"] == "<orig@x.test>"
    assert msg["References"] == "<root@x.test> <orig@x.test>"
    assert composed.envelope_recipients == [
        "bob@inboxstream.test",
        "carol@inboxstream.test",
        "dave@inboxstream.test",
    ]
    assert [p.get_filename() for p in msg.iter_attachments()] == ["notes.txt"]
    event = outbound_event(composed, "alice@inboxstream.test", crm_ref=None, sent_at=when)
    again = outbound_event(
        composed, "alice@inboxstream.test", crm_ref="x", sent_at=datetime.now(UTC)
    )
    assert event.event_id == again.event_id
    assert event.contact_email == "bob@inboxstream.test"


def test_compose_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidMessageError):
        compose(Draft(to=[], subject="x", text="y"), SENDER, "m@x.test")
    with pytest.raises(InvalidMessageError):
        compose(
            Draft(to=["b@x.test"], subject="a\r\nBcc: evil@x.test", text="y"), SENDER, "m@x.test"
        )
    with pytest.raises(InvalidMessageError):
        compose(
            Draft(
                to=["b@x.test"],
                subject="x",
                text="y",
                attachments=[AttachmentFile(tmp_path / "missing.pdf")],
            ),
            SENDER,
            "m@x.test",
        )
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(MAX_MESSAGE_BYTES + 1)  # sparse: no 50 MB written
    with pytest.raises(MessageTooLargeError):
        compose(
            Draft(to=["b@x.test"], subject="x", text="y", attachments=[AttachmentFile(big)]),
            SENDER,
            "m@x.test",
        )


def _folder(name: str, *flags: str) -> Folder:
    return Folder(name, name, frozenset(flags), "/")


def test_sent_folder_special_use_first_then_name_then_error() -> None:
    flagged = [_folder("INBOX"), _folder("Sent Items"), _folder("Gesendet", "\\Sent")]
    assert choose_sent_folder(flagged).name == "Gesendet"
    named = [_folder("INBOX"), _folder("Archive"), _folder("Sent Items"), _folder("Sent")]
    assert choose_sent_folder(named).name == "Sent Items"
    with pytest.raises(NoSentFolderError) as info:
        choose_sent_folder([_folder("INBOX"), _folder("Outbox"), _folder("Sent", "\\Noselect")])
    assert "Outbox" in str(info.value)
    assert not info.value.retriable

"""Sending through a connected inbox against real Postfix, Dovecot and Kafka."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from inboxstream.app.cli import main
from inboxstream.core.settings import Settings
from inboxstream.imap.exceptions import AuthError
from inboxstream.infra import postfix
from inboxstream.schemas.models import OutboundEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.send.sender import (
    AttachmentFile,
    Draft,
    MailSender,
    NoSentFolderError,
)
from inboxstream.send.smtp import (
    InvalidAddressError,
    MessageTooLargeError,
    SmtpEndpoint,
    SmtpRejectedError,
    SmtpTlsError,
    submit,
)
from tests.helpers.send import Person, read_topic


def _header(raw: bytes, name: str) -> str | None:
    value = message_from_bytes(raw, policy=default_policy)[name]
    return None if value is None else str(value)


async def test_delivered_and_exact_copy_in_sent(
    mail_sender: MailSender, people: Callable[..., Person], settings: Settings, tmp_path: Path
) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4 not really a pdf\n" * 50)
    result = await mail_sender.send(
        alice.inbox(security="starttls"),
        Draft(
            to=[f"Bob Example <{bob.name}>"],
            cc=[carol.name],
            subject="Quarterly numbers",
            text="Hi Bob,\nthe numbers are attached.\n",
            attachments=[AttachmentFile(report)],
        ),
        crm_ref="deal-42",
    )
    assert not result.already_sent
    assert result.sent_folder == "Sent"
    assert set(result.recipients) == {bob.name, carol.name}

    sent = alice.messages("Sent")
    assert len(sent) == 1
    assert _header(sent[0], "Message-ID") == f"<{result.message_id}>"
    for person in (bob, carol):
        delivered = person.wait_for("INBOX", 1)
        assert len(delivered) == 1
        # The Sent copy is exactly what was submitted: the delivered copy is those bytes
        # behind the trace headers Postfix and Dovecot prepend.
        assert delivered[0].replace(b"\r\n", b"\n").endswith(sent[0].replace(b"\r\n", b"\n"))
    parsed = message_from_bytes(sent[0], policy=default_policy)
    names = [part.get_filename() for part in parsed.iter_attachments()]  # type: ignore[attr-defined]
    assert names == ["report.pdf"]

    records = await read_topic(settings, settings.topics.crm_outbound.name, 1)
    assert len(records) == 1
    assert records[0].key == result.message_id.encode()
    event = serde_for(OutboundEvent).decode(records[0].value, records[0].headers)
    assert event.message_id == result.message_id
    assert event.inbox_id == alice.name
    assert event.contact_email == bob.name
    assert event.contact_name == "Bob Example"
    assert event.subject == "Quarterly numbers"
    assert event.crm_ref == "deal-42"
    assert event.kind == "sent"


async def test_implicit_tls_and_sent_items_without_special_use(
    mail_sender: MailSender, people: Callable[..., Person]
) -> None:
    dave = people("dave", special_use=False, sent_folder="Sent Items")
    erin = people("erin")
    result = await mail_sender.send(
        dave.inbox(security="tls"), Draft(to=[erin.name], subject="hello", text="over 465")
    )
    assert result.sent_folder == "Sent Items"
    assert len(dave.messages("Sent Items")) == 1
    assert len(erin.wait_for("INBOX", 1)) == 1


async def test_no_sent_folder_is_an_error_and_nothing_is_sent_or_created(
    mail_sender: MailSender, people: Callable[..., Person]
) -> None:
    frank = people("frank", special_use=False, sent_folder="Outbox")
    grace = people("grace")
    before = sorted(frank.folders())
    with pytest.raises(NoSentFolderError) as info:
        await mail_sender.send(frank.inbox(), Draft(to=[grace.name], subject="x", text="y"))
    assert not info.value.retriable
    assert "Outbox" in str(info.value)
    assert sorted(frank.folders()) == before  # no folder was created
    assert frank.messages("Outbox") == []
    assert mail_sender.budgets.for_inbox(frank.name).in_use["send"] == 0


async def test_idempotent_retry_sends_once(
    mail_sender: MailSender, people: Callable[..., Person], settings: Settings
) -> None:
    heidi, ivan = people("heidi"), people("ivan")
    draft = Draft(to=[ivan.name], subject="only once", text="same key twice")
    first = await mail_sender.send(heidi.inbox(), draft, idempotency_key="crm-email-7")
    again = await mail_sender.send(heidi.inbox(), draft, idempotency_key="crm-email-7")
    assert not first.already_sent
    assert again.already_sent
    assert again.message_id == first.message_id
    other = await mail_sender.send(heidi.inbox(), draft, idempotency_key="crm-email-8")
    assert other.message_id != first.message_id
    assert len(heidi.messages("Sent")) == 2
    assert len(ivan.wait_for("INBOX", 2)) == 2
    # Concurrent calls with one key are serialised per inbox: still one delivery.
    results = await asyncio.gather(
        *(mail_sender.send(heidi.inbox(), draft, idempotency_key="crm-email-9") for _ in range(3))
    )
    assert sorted(r.already_sent for r in results) == [False, True, True]
    assert len(heidi.messages("Sent")) == 3
    assert mail_sender.budgets.for_inbox(heidi.name).peak == 2  # the two "send" slots
    # Re-announcing is harmless: the same event_id for the same Message-ID.
    records = await read_topic(settings, settings.topics.crm_outbound.name, 6)
    ids = {serde_for(OutboundEvent).decode(r.value, r.headers).event_id for r in records}
    assert len(records) == 6
    assert len(ids) == 3
    delivered = ivan.wait_for("INBOX", 3)
    assert len(delivered) == 3


@pytest.mark.parametrize(
    "bad",
    [
        "no-at-sign.example",
        "two@@inboxstream.test",
        "bob@localhost",
        "bob@inboxstream.test\r\nBcc: victim@example.com",
        "bob smith@inboxstream.test",
        "",
    ],
)
async def test_invalid_address_is_refused_before_connecting(
    mail_sender: MailSender, people: Callable[..., Person], bad: str
) -> None:
    judy = people("judy")
    with pytest.raises(InvalidAddressError):
        await mail_sender.send(judy.inbox(), Draft(to=[bad], subject="x", text="y"))
    assert mail_sender.budgets.for_inbox(judy.name).peak == 0  # no connection was opened


async def test_unknown_mailbox_is_rejected_at_rcpt_without_sent_copy(
    mail_sender: MailSender, people: Callable[..., Person]
) -> None:
    kim, leo = people("kim"), people("leo")
    ghost = f"ghost-{kim.name}"
    with pytest.raises(SmtpRejectedError) as info:
        await mail_sender.send(kim.inbox(), Draft(to=[leo.name, ghost], subject="x", text="y"))
    assert info.value.stage == "rcpt"
    assert info.value.code == 550
    assert info.value.recipient == ghost
    assert not info.value.retriable
    assert kim.messages("Sent") == []
    # All or nothing: the valid recipient got nothing either (the transaction was reset).
    assert leo.messages("INBOX") == []


async def test_executable_attachment_is_rejected_after_data(
    mail_sender: MailSender, people: Callable[..., Person], tmp_path: Path
) -> None:
    mia, ned = people("mia"), people("ned")
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ" + b"\0" * 100)
    draft = Draft(to=[ned.name], subject="x", text="y", attachments=[AttachmentFile(exe)])
    with pytest.raises(SmtpRejectedError) as info:
        await mail_sender.send(mia.inbox(), draft)
    assert info.value.stage == "data"
    assert info.value.code >= 500
    assert "executable" in str(info.value)
    assert mia.messages("Sent") == []


async def test_oversize_message_is_refused_by_the_servers_size_limit(
    mail_sender: MailSender, people: Callable[..., Person], tmp_path: Path
) -> None:
    olga, pat = people("olga"), people("pat")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * (postfix.MESSAGE_SIZE_LIMIT * 3 // 4 + 10_000))  # base64: > limit
    draft = Draft(to=[pat.name], subject="x", text="y", attachments=[AttachmentFile(big)])
    with pytest.raises(MessageTooLargeError) as info:
        await mail_sender.send(olga.inbox(), draft)
    assert f"{postfix.MESSAGE_SIZE_LIMIT:,}" in str(info.value)
    assert olga.messages("Sent") == []


async def test_wrong_password_is_a_typed_auth_error(
    mail_sender: MailSender, people: Callable[..., Person]
) -> None:
    quinn, rob = people("quinn"), people("rob")
    inbox = quinn.inbox().model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(AuthError) as info:
        await mail_sender.send(inbox, Draft(to=[rob.name], subject="x", text="y"))
    assert not info.value.retriable
    assert "not-the-password" not in str(info.value)


async def test_smtp_refuses_sending_as_someone_else(
    postfix_server: postfix.PostfixEndpoints, people: Callable[..., Person]
) -> None:
    sam, tia = people("sam"), people("tia")
    endpoint = SmtpEndpoint(
        postfix_server.tls_hostname,
        postfix_server.smtps_port,
        "tls",
        ca_file=postfix_server.ca_cert,
    )
    with pytest.raises(SmtpRejectedError) as info:
        await submit(
            endpoint, sam.name, sam.password, sender=tia.name, recipients=[tia.name], raw=b"x\r\n"
        )
    assert "not owned by user" in str(info.value)
    assert info.value.code == 553


async def test_smtp_certificate_is_verified_unless_the_inbox_allows_otherwise(
    postfix_server: postfix.PostfixEndpoints, people: Callable[..., Person]
) -> None:
    uma, vic = people("uma"), people("vic")
    raw = f"From: {uma.name}\r\nTo: {vic.name}\r\nSubject: tls\r\n\r\nbody\r\n".encode()
    untrusted = SmtpEndpoint(
        postfix_server.tls_hostname, postfix_server.submission_port, "starttls"
    )  # system CAs only: our test CA is unknown
    with pytest.raises(SmtpTlsError):
        await submit(
            untrusted, uma.name, uma.password, sender=uma.name, recipients=[vic.name], raw=raw
        )
    allowed = SmtpEndpoint(
        postfix_server.tls_hostname,
        postfix_server.submission_port,
        "starttls",
        allow_unverified_certificate=True,
    )
    accepted = await submit(
        allowed, uma.name, uma.password, sender=uma.name, recipients=[vic.name], raw=raw
    )
    assert accepted.code == 250
    assert len(vic.wait_for("INBOX", 1)) == 1


def test_cli_send(
    people: Callable[..., Person],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walt, xena = people("walt"), people("xena")
    inbox = walt.inbox(security="tls")
    inbox_json = {**inbox.model_dump(mode="json"), "password": walt.password}
    monkeypatch.setenv("INBOXSTREAM_INBOXES", json.dumps([inbox_json]))
    monkeypatch.setenv("INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("INBOXSTREAM_TOPICS__CRM_OUTBOUND__NAME", settings.topics.crm_outbound.name)
    monkeypatch.setenv("INBOXSTREAM_TOPICS__CRM_OUTBOUND__RETENTION_MS", "-1")
    body = tmp_path / "body.txt"
    body.write_text("Hello from the command line\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("attached\n")
    args = [
        "send",
        "--from-inbox",
        walt.name,
        "--to",
        xena.name,
        "--subject",
        "cli",
        "--body-file",
        str(body),
        "--attach",
        str(notes),
        "--idempotency-key",
        "cli-1",
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "already sent" in second.output
    assert first.stdout.strip().splitlines()[-1] == second.stdout.strip().splitlines()[-1]
    assert len(walt.messages("Sent")) == 1
    delivered = xena.wait_for("INBOX", 1)
    assert len(delivered) == 1
    assert b"Hello from the command line" in delivered[0]
    bad = CliRunner().invoke(main, [*args[:3], "--to", "nobody", "--subject", "x", "--body", "y"])
    assert bad.exit_code == 1
    assert "invalid_address" in bad.output


def test_cli_send_through_an_inbox_added_with_inbox_add(
    people: Callable[..., Person],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An inbox the producer service runs (from `inboxstream inbox add`, not the config file)
    can send: the only inbox there, so no --from-inbox is needed."""
    from inboxstream.producers.registry import InboxRegistry

    yuri, zoe = people("yuri"), people("zoe")
    InboxRegistry(tmp_path / "inboxes").add(yuri.inbox(security="tls"))
    monkeypatch.delenv("INBOXSTREAM_INBOXES", raising=False)
    monkeypatch.setenv("INBOXSTREAM_PRODUCER__REGISTRY_DIR", str(tmp_path / "inboxes"))
    monkeypatch.setenv("INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("INBOXSTREAM_TOPICS__CRM_OUTBOUND__NAME", settings.topics.crm_outbound.name)
    monkeypatch.setenv("INBOXSTREAM_TOPICS__CRM_OUTBOUND__RETENTION_MS", "-1")
    args = ["send", "--to", zoe.name, "--subject", "from the registry", "--body", "hi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(yuri.messages("Sent")) == 1
    assert b"from the registry" in zoe.wait_for("INBOX", 1)[0]
    empty = tmp_path / "none"
    monkeypatch.setenv("INBOXSTREAM_PRODUCER__REGISTRY_DIR", str(empty))
    nothing = CliRunner().invoke(main, args)
    assert nothing.exit_code != 0
    assert "inboxstream inbox add" in nothing.output

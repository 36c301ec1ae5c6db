"""Send mail through a connected inbox: SMTP submission, the copy in Sent, ``crm.outbound``.

The source documents' rules: the CRM sends as the inbox owner through the owner's SMTP server
(TLS, authenticated), with at most two temporary connections while sending, and copies what
it sent to the ``\\Sent`` special-use folder, else the first folder whose name contains
"sent" (``producers.folders.assign_roles``). Replies are later matched by the Message-ID,
which is why every send is announced on ``crm.outbound``.

Order of a send (one inbox's sends run one at a time, see ``MailSender``):

1. validate addresses and size, derive the Message-ID from the idempotency key;
2. IMAP (budget slot "send" #1): find the sent folder (none: ``NoSentFolderError``, nothing is
   sent and no folder is created) and ``UID SEARCH HEADER Message-ID``: found means this key
   was sent before, so we only re-announce it and return;
3. SMTP (slot "send" #2): submit; any refusal raises and leaves no Sent copy;
4. APPEND the exact submitted bytes to the sent folder (``\\Seen``), on the connection of 2;
5. publish ``OutboundEvent`` (key = Message-ID, ``event_id`` derived from it, so a repeat is
   a duplicate that consumers collapse).

Idempotency, honestly: a retry with the same key after step 4 sends nothing. The remaining
window is between the server accepting DATA (3) and the APPEND landing (4), usually a few
milliseconds: a crash there, or a connection lost after the final "." but before the server's
reply (the classic SMTP ambiguity, RFC 1047), makes a retry send a second copy with the same
Message-ID (recipients' clients and our threading collapse it by Message-ID, but it is a real
second delivery).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr
from pathlib import Path

from aiokafka import AIOKafkaProducer

from inboxstream.core.contracts import MAX_MESSAGE_BYTES
from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.oauth import TokenSources
from inboxstream.core.settings import InboxSettings, Settings, TopicSettings
from inboxstream.errors import InboxstreamError
from inboxstream.imap.budget import BudgetRegistry
from inboxstream.imap.connection import ImapConnection, ImapEndpoint, endpoint_for_inbox
from inboxstream.imap.fetch import search_uids
from inboxstream.imap.folders import Folder, assign_roles
from inboxstream.schemas.models import OutboundEvent
from inboxstream.schemas.serde import serde_for
from inboxstream.send.smtp import (
    InvalidAddressError,
    InvalidMessageError,
    MessageTooLargeError,
    SendError,
    SmtpEndpoint,
    submit,
)

log = logging.getLogger(__name__)


_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAMED_RE = re.compile(r'^\s*(?:"(?P<qname>[^"]*)"|(?P<name>[^<>"]*?))\s*<(?P<addr>[^<>]*)>\s*$')


class NoSentFolderError(SendError):
    """The mailbox has no ``\\Sent`` folder and no folder named like "sent": nothing was sent.

    We never create one silently: the owner decides where their sent mail lives.
    """

    kind = "no_sent_folder"


class SentCopyError(SendError):
    """The server ACCEPTED the message, but copying it into the sent folder failed.

    Not retriable: a retry would send the message a second time.
    """

    kind = "sent_copy"


class OutboundEventError(SendError):
    """Sent and copied, but ``crm.outbound`` was not published: retry with the same key
    (it finds the copy in Sent, sends nothing and publishes the event)."""

    kind = "outbound_event"
    retriable = True


# --- addresses and composition (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Mailbox:
    """One validated address: ``email`` is the ASCII addr-spec used on the SMTP envelope."""

    email: str
    name: str | None = None

    def header(self) -> str:
        return formataddr((self.name, self.email)) if self.name else self.email


def parse_mailbox(text: str) -> Mailbox:
    """``a@b.example`` or ``Name <a@b.example>`` to a Mailbox, or InvalidAddressError.

    Stricter than RFC 5322 on purpose: no comments, no quoted local parts, no IP literals,
    no non-ASCII local parts (that needs SMTPUTF8). A Unicode domain is IDNA-encoded.
    """
    if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
        raise InvalidAddressError(f"invalid address {text!r}: control characters")
    name: str | None = None
    addr = text.strip()
    match = _NAMED_RE.match(text)
    if match:
        addr = match["addr"].strip()
        name = (match["qname"] if match["qname"] is not None else match["name"] or "").strip()
        name = name or None
    if addr.count("@") != 1:
        raise InvalidAddressError(f"invalid address {text!r}: expected exactly one '@'")
    local, domain = addr.split("@")
    if not local or len(local) > 64 or not _LOCAL_RE.match(local):
        raise InvalidAddressError(f"invalid address {text!r}: bad local part {local!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidAddressError(f"invalid address {text!r}: bad domain {domain!r}") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise InvalidAddressError(
            f"invalid address {text!r}: the domain must be a full host name like example.com"
        )
    email = f"{local}@{ascii_domain}"
    if len(email) > 254:
        raise InvalidAddressError(f"invalid address {text!r}: longer than 254 characters")
    return Mailbox(email, name)


@dataclass(frozen=True)
class AttachmentFile:
    """A file to attach; the content type is guessed from the name unless given."""

    path: Path
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Draft:
    """What the caller wants to send. Addresses are strings; ``compose`` validates them."""

    to: Sequence[str]
    subject: str
    text: str
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    html: str | None = None
    attachments: Sequence[AttachmentFile] = ()
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    from_name: str | None = None


@dataclass(frozen=True)
class ComposedMessage:
    """The exact bytes we submit and copy to Sent, plus the envelope."""

    raw: bytes
    message_id: str  # without angle brackets
    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    bcc: tuple[Mailbox, ...]
    subject: str

    @property
    def envelope_recipients(self) -> list[str]:
        seen: dict[str, None] = {}
        for box in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(box.email.lower(), None)
        return list(seen)


def message_id_for(inbox_id: str, idempotency_key: str, sender_domain: str) -> str:
    """The same key always gives the same Message-ID (so a retry is recognised in Sent)."""
    digest = hashlib.sha256(f"{inbox_id}\0{idempotency_key}".encode()).hexdigest()[:32]
    return f"crm.{digest}@{sender_domain}"


def _no_crlf(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise InvalidMessageError(f"{what} must be a single line")
    return value


def compose(
    draft: Draft, sender: Mailbox, message_id: str, *, date: datetime | None = None
) -> ComposedMessage:
    """Build the RFC 5322 message (CRLF line ends, as submitted). Raises typed errors."""
    to = tuple(parse_mailbox(a) for a in draft.to)
    cc = tuple(parse_mailbox(a) for a in draft.cc)
    bcc = tuple(parse_mailbox(a) for a in draft.bcc)
    if not (to or cc or bcc):
        raise InvalidMessageError("a message needs at least one recipient (to, cc or bcc)")
    subject = _no_crlf(draft.subject, "the subject")
    total = len(draft.text.encode()) + len((draft.html or "").encode())
    for att in draft.attachments:
        try:
            total += att.path.stat().st_size
        except OSError as exc:
            raise InvalidMessageError(
                f"cannot read attachment {att.path}: {exc.strerror}"
            ) from None
    if total > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"the message would be over {total:,} bytes; at most {MAX_MESSAGE_BYTES:,} can be sent"
        )
    msg = EmailMessage(policy=SMTP_POLICY)
    name = _no_crlf(draft.from_name, "the sender name") if draft.from_name else sender.name
    msg["From"] = Address(display_name=name or "", addr_spec=sender.email)
    if to:
        msg["To"] = ", ".join(m.header() for m in to)
    if cc:
        msg["Cc"] = ", ".join(m.header() for m in cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = f"<{message_id}>"
    if draft.in_reply_to:
        msg["In-Reply-To"] = f"<{_no_crlf(draft.in_reply_to, 'In-Reply-To').strip('<>')}>"
    refs = [_no_crlf(r, "References").strip("<>") for r in draft.references]
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    msg.set_content(draft.text)
    if draft.html is not None:
        msg.add_alternative(draft.html, subtype="html")
    for att in draft.attachments:
        filename = att.filename or att.path.name
        ctype = att.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        try:
            data = att.path.read_bytes()
        except OSError as exc:
            raise InvalidMessageError(
                f"cannot read attachment {att.path}: {exc.strerror}"
            ) from None
        msg.add_attachment(
            data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename
        )
    raw = msg.as_bytes(policy=SMTP_POLICY)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"the message is {len(raw):,} bytes; at most {MAX_MESSAGE_BYTES:,} can be sent"
        )
    return ComposedMessage(raw, message_id, sender, to, cc, bcc, subject)


def outbound_event(
    composed: ComposedMessage, inbox_id: str, *, crm_ref: str | None, sent_at: datetime
) -> OutboundEvent:
    """``crm.outbound`` for a sent message; ``event_id`` depends only on the Message-ID."""
    first = next(iter((*composed.to, *composed.cc, *composed.bcc)), None)
    return OutboundEvent(
        event_id=hashlib.sha256(f"outbound\0{composed.message_id}".encode()).hexdigest()[:32],
        message_id=composed.message_id,
        kind="sent",
        inbox_id=inbox_id,
        contact_email=first.email if first else None,
        contact_name=first.name if first else None,
        subject=composed.subject,
        crm_ref=crm_ref,
        sent_at=sent_at,
    )


def sender_mailbox(inbox: InboxSettings) -> Mailbox:
    """The owner's address: the login when it is an address, else the inbox id."""
    return parse_mailbox(inbox.username if "@" in inbox.username else inbox.id)


def imap_endpoint(inbox: InboxSettings) -> ImapEndpoint:
    """The same endpoint the producers use (TLS 1.0/1.1 only when the inbox opted in)."""
    return endpoint_for_inbox(inbox)


def smtp_endpoint(inbox: InboxSettings) -> SmtpEndpoint:
    return SmtpEndpoint(
        host=inbox.smtp_host or inbox.imap_host,
        port=inbox.smtp_port,
        security=inbox.smtp_security,
        allow_unverified_certificate=inbox.allow_unverified_certificate,
        ca_file=inbox.ca_file,
        tls_min_version="TLSv1" if inbox.allow_legacy_tls else "TLSv1.2",
    )


def choose_sent_folder(folders: list[Folder]) -> Folder:
    """The folder ``assign_roles`` calls "sent", or NoSentFolderError (never created)."""
    roles = assign_roles(folders)
    for folder in folders:
        if roles.get(folder.wire_name) == "sent":
            return folder
    names = ", ".join(repr(f.name) for f in folders) or "none"
    raise NoSentFolderError(
        "the mailbox has no \\Sent special-use folder and no folder whose name contains "
        f"'sent' (folders: {names}); create one in the mail client, nothing was sent"
    )


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    """What happened. ``already_sent``: the key was sent before; nothing was sent this time."""

    message_id: str
    sent_folder: str
    already_sent: bool
    recipients: tuple[str, ...]
    smtp_reply: str | None = None
    smtp_seconds: float = 0.0
    append_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass
class MailSender:
    """Sends through connected inboxes, sharing the process's per-inbox connection budget.

    Sends of one inbox run one at a time: each takes both "send" slots (IMAP, then SMTP), and
    two sends taking one slot each would wait for each other forever. That also serialises
    retries of the same key, so two concurrent calls cannot both miss the Sent copy.
    """

    producer: AIOKafkaProducer
    topics: TopicSettings
    budgets: BudgetRegistry = field(default_factory=BudgetRegistry)
    #: OAuth2 access tokens per inbox (core/oauth.py); give it a store for rotated tokens.
    tokens: TokenSources = field(default_factory=TokenSources)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)

    async def send(
        self,
        inbox: InboxSettings,
        draft: Draft,
        *,
        idempotency_key: str | None = None,
        crm_ref: str | None = None,
    ) -> SendResult:
        """Send ``draft`` as the inbox owner; see the module docstring for the steps."""
        started = time.perf_counter()
        sender = sender_mailbox(inbox)
        key = idempotency_key or uuid.uuid4().hex
        message_id = message_id_for(inbox.id, key, sender.email.rsplit("@", 1)[1])
        composed = compose(draft, sender, message_id)  # validate before any connection
        password = self.tokens.credentials(inbox)
        budget = self.budgets.for_inbox(inbox.id)
        lock = self._locks.setdefault(inbox.id, asyncio.Lock())
        async with lock, budget.hold("send"):
            conn = await ImapConnection.open(imap_endpoint(inbox), inbox.username, password)
            try:
                sent = choose_sent_folder(await conn.list_folders())
                if await _find_message_id(conn, sent.wire_name, message_id):
                    log.info(
                        "%s: %s is already in %r; not sending again",
                        inbox.id,
                        message_id,
                        sent.name,
                    )
                    await self._announce(composed, inbox.id, crm_ref)
                    return SendResult(
                        message_id,
                        sent.name,
                        True,
                        tuple(composed.envelope_recipients),
                        total_seconds=time.perf_counter() - started,
                    )
                async with budget.hold("send"):
                    t0 = time.perf_counter()
                    reply = await submit(
                        smtp_endpoint(inbox),
                        inbox.username,
                        password,
                        sender=sender.email,
                        recipients=composed.envelope_recipients,
                        raw=composed.raw,
                    )
                    smtp_seconds = time.perf_counter() - t0
                t1 = time.perf_counter()
                conn = await self._append_sent(conn, inbox, sent.wire_name, composed)
                append_seconds = time.perf_counter() - t1
            finally:
                await conn.logout()
        await self._announce(composed, inbox.id, crm_ref)
        return SendResult(
            message_id,
            sent.name,
            False,
            reply.recipients,
            smtp_reply=reply.reply,
            smtp_seconds=smtp_seconds,
            append_seconds=append_seconds,
            total_seconds=time.perf_counter() - started,
        )

    async def _append_sent(
        self, conn: ImapConnection, inbox: InboxSettings, folder: str, composed: ComposedMessage
    ) -> ImapConnection:
        """APPEND the exact submitted bytes; one retry on a fresh connection (same slot).

        The message is already sent, so a failure here must not look retriable to the caller.
        Returns the connection in use (the fresh one after a retry) for the caller to close.
        """
        last: BaseException | None = None
        for attempt in range(2):
            try:
                if attempt:
                    await conn.logout()
                    conn = await ImapConnection.open(
                        imap_endpoint(inbox), inbox.username, self.tokens.credentials(inbox)
                    )
                response = await asyncio.wait_for(
                    conn.protocol.append(
                        composed.raw, mailbox=_quote(folder), flags="(\\Seen)", date=None
                    ),
                    conn.endpoint.timeout,
                )
                if response.result == "OK":
                    return conn
                last = InboxstreamError(
                    " ".join(bytes(x).decode("utf-8", "replace") for x in response.lines)[:200]
                )
            except (InboxstreamError, OSError, TimeoutError) as exc:
                last = exc
        try:
            await self._announce(composed, inbox.id, None)
        except SendError:
            pass  # the copy error below is the one the caller must see
        raise SentCopyError(
            f"the message {composed.message_id} WAS SENT, but copying it to {folder!r} failed: "
            f"{last}. Do not retry (it would send again)"
        )

    async def _announce(
        self, composed: ComposedMessage, inbox_id: str, crm_ref: str | None
    ) -> None:
        event = outbound_event(composed, inbox_id, crm_ref=crm_ref, sent_at=datetime.now(UTC))
        serde = serde_for(OutboundEvent)
        try:
            await self.producer.send_and_wait(
                self.topics.crm_outbound.name,
                value=serde.encode(event),
                key=composed.message_id.encode(),
                headers=serde.headers("outbound.sent"),
            )
        except Exception as exc:  # noqa: BLE001 - any Kafka failure means "not announced"
            raise OutboundEventError(
                f"{composed.message_id} was sent and copied to Sent, but publishing "
                f"crm.outbound failed ({type(exc).__name__}: {exc}); retry with the same "
                "idempotency key to publish it"
            ) from exc


async def _find_message_id(conn: ImapConnection, folder: str, message_id: str) -> bool:
    """Is a message with this Message-ID already in ``folder``? (UID SEARCH HEADER)"""
    await conn.select(folder, readonly=True)
    try:
        response = await asyncio.wait_for(
            conn.protocol.search(
                "HEADER", "Message-ID", _quote(f"<{message_id}>"), charset=None, by_uid=True
            ),
            conn.endpoint.timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise SendError(
            f"searching {folder!r} for an earlier send failed: {exc}", retriable=True
        ) from exc
    if response.result != "OK":
        raise SendError(f"searching {folder!r} for an earlier send failed", retriable=True)
    return bool(search_uids(response.lines[:-1]))


async def send_message(
    settings: Settings,
    inbox: InboxSettings,
    draft: Draft,
    *,
    idempotency_key: str | None = None,
    crm_ref: str | None = None,
    budgets: BudgetRegistry | None = None,
    tokens: TokenSources | None = None,
) -> SendResult:
    """One send with its own Kafka producer (the CLI's path); long-lived services keep a
    ``MailSender`` instead and share their ``BudgetRegistry`` with it. ``tokens``: with a
    store for rotated OAuth2 refresh tokens (the registry's, given by the app)."""
    await ensure_topics(settings.kafka, settings.topics, [settings.topics.crm_outbound])
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        sender = MailSender(
            producer,
            settings.topics,
            budgets or BudgetRegistry(),
            tokens or TokenSources(),
        )
        return await sender.send(inbox, draft, idempotency_key=idempotency_key, crm_ref=crm_ref)
    finally:
        await producer.stop()

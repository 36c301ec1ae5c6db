"""Raw RFC 5322 bytes → ``MessageEvent`` + ``BodyEvent``. Pure logic, no I/O.

Mail in the wild is broken in every way: missing or duplicated headers, bad charsets, bad dates,
truncated MIME. Nothing here raises for bad input: each field falls back to a safe value and the
first problem is recorded in ``parse_error``, so the event is still published (never dropped).
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses
from typing import Any, cast

from inboxstream.core.contracts import MAX_MESSAGE_BYTES
from inboxstream.imap.fetch import FetchedItem
from inboxstream.mail.automatic import AutomaticKind, automatic_kind
from inboxstream.mail.headers import decode_bytes, decode_text, parse_date, parse_msg_ids
from inboxstream.mail.limits import (
    MAX_ATTACHMENTS,
    MAX_BODY_BYTES,
    MAX_MIME_DEPTH,
    MAX_MIME_PARTS,
    MAX_RAW_HEADER_BYTES,
    MAX_REFERENCES,
    cap_references,
    clip_address_list,
    clip_text,
    clip_utf8,
    flatten_comments,
)
from inboxstream.mail.mime import Leaf, StdlibLeaf, parse_fast, parse_stdlib
from inboxstream.schemas.models import (
    AddressRecord,
    AttachmentRecord,
    BodyEvent,
    FolderRole,
    MessageEvent,
    utc_millis,
    utf8_safe,
)

ATTACHMENT_LOG_LIMIT = MAX_MESSAGE_BYTES  # the source documents: "less than 50 MB"
MAX_PARSE_ERROR_CHARS = 4000

_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class FetchedMessage:
    """What the IMAP layer hands over for one message."""

    inbox_id: str
    folder: str
    folder_role: FolderRole
    uidvalidity: int
    uid: int
    raw: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    size: int | None = None
    modseq: int | None = None
    gm_msgid: str | None = None
    gm_labels: tuple[str, ...] = ()

    @classmethod
    def from_item(
        cls,
        item: FetchedItem,
        *,
        inbox_id: str,
        folder: str,
        folder_role: FolderRole,
        uidvalidity: int,
    ) -> FetchedMessage:
        """One parsed FETCH response item, placed in its inbox and folder."""
        return cls(
            inbox_id=inbox_id,
            folder=folder,
            folder_role=folder_role,
            uidvalidity=uidvalidity,
            uid=item.uid,
            raw=item.raw or b"",
            flags=item.flags,
            internal_date=item.internal_date,
            size=item.size,
            modseq=item.modseq,
            gm_msgid=item.gm_msgid,
            gm_labels=item.gm_labels,
        )


def event_id(
    inbox_id: str,
    folder: str,
    uidvalidity: int,
    uid: int,
    event_type: str = "message.new",
    modseq: int | None = None,
) -> str:
    """Stable idempotency key: the same message seen again gets the same id.

    ``message.new`` leaves modseq out on purpose: refetching a message whose flags changed must
    not look like a new message. Flag events include it, so each change is its own event.
    """
    parts = [inbox_id, folder, str(uidvalidity), str(uid), event_type]
    if event_type != "message.new":
        parts.append(str(modseq or 0))
    # surrogatepass: a hostile server's folder name can decode to a lone surrogate; the key
    # must stay stable and never raise (UTF-8 text hashes exactly as before).
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def message_identity(fetched: FetchedMessage) -> str:
    """The ``message.new`` event id: per folder copy, except on Gmail (X-GM-EXT-1), where
    labels are folders and one message shows up in several of them: there X-GM-MSGID names the
    message, so every copy is the same event (the sink keeps one row, the processor threads
    it once)."""
    if fetched.gm_msgid is not None:
        parts = [fetched.inbox_id, "x-gm-msgid", fetched.gm_msgid, "message.new"]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
    return event_id(fetched.inbox_id, fetched.folder, fetched.uidvalidity, fetched.uid)


def role_of(fetched: FetchedMessage) -> FolderRole:
    """The folder's role; on Gmail the message's labels decide, so every copy agrees (a sent
    message labelled "Work" is sent mail in the Work folder too)."""
    if "\\Sent" in fetched.gm_labels:
        return "sent"
    if "\\Inbox" in fetched.gm_labels:
        return "inbox"
    return fetched.folder_role


def split_header_block(raw: bytes) -> bytes:
    """The header block as the server sent it, including the blank line's first CRLF."""
    # What servers send, found without the regex (4 µs): the first CRLF CRLF is where the
    # regex would stop too when no LF before it stands alone.
    end = raw.find(b"\r\n\r\n")
    if end >= 0 and raw.count(b"\n", 0, end) == raw.count(b"\r\n", 0, end):
        return raw[:end] + b"\r\n"
    match = _HEADER_END_RE.search(raw)
    return raw[: match.start()] + b"\r\n" if match else raw


def synthetic_message_id(header_block: bytes) -> str:
    """A deterministic id for mail without Message-ID: the same bytes give the same id,
    so the copy in INBOX and the copy in another folder still thread together."""
    digest = hashlib.sha256(header_block.replace(b"\r\n", b"\n").strip()).hexdigest()[:40]
    return f"{digest}@synthetic.inboxstream.invalid"


def _addresses(msg: Message, name: str, errors: list[str]) -> list[AddressRecord]:
    values = msg.get_all(name)
    if not values:
        return []
    bounded = []
    for value in values:
        text, clipped = clip_address_list(str(value))
        if clipped:
            errors.append(f"{name} header cut to its first {len(text)} characters")
        bounded.append(flatten_comments(text))
    return list(_parse_addresses(tuple(bounded)))


@functools.lru_cache(maxsize=4096)
def _parse_addresses(values: tuple[str, ...]) -> tuple[AddressRecord, ...]:
    """Address headers repeat across a mailbox (the owner is in every To or From), and the
    stdlib address parser is a fifth of a backfill's parsing time: cache by the raw value.
    The records are shared between events and never mutated; 4,096 entries bound the memory."""
    out: list[AddressRecord] = []
    for display, addr in getaddresses(list(values)):
        addr = addr.strip()
        if not addr:
            continue
        out.append({"name": decode_text(display) or None, "email": addr})
    return tuple(out)


def _date(msg: Message) -> datetime | None:
    return parse_date(msg.get("Date"))


def _decode_part(leaf: Leaf) -> str | None:
    payload = leaf.payload()
    if payload is None:
        return None
    return decode_bytes(payload, leaf.charset)


def leaf_parts(msg: Message, errors: list[str]) -> list[Message]:
    """The non-multipart parts in document order, without recursion (``Message.walk`` recurses
    once per nesting level, which a sender controls): parts nested deeper than
    ``MAX_MIME_DEPTH`` or beyond ``MAX_MIME_PARTS`` are not read, and that is said."""
    leaves: list[Message] = []
    seen = too_deep = 0
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_MIME_PARTS:
            errors.append(f"MIME: more than {MAX_MIME_PARTS} parts; the rest not read")
            break
        if not part.is_multipart():
            leaves.append(part)
            continue
        children = part.get_payload()
        if not isinstance(children, list):
            continue
        if depth >= MAX_MIME_DEPTH:
            too_deep += len(children)
            continue
        stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Message))
    if too_deep:
        errors.append(f"MIME: {too_deep} parts nested deeper than {MAX_MIME_DEPTH} not read")
    return leaves


def _attachments(leaves: list[Leaf], errors: list[str]) -> list[AttachmentRecord]:
    out: list[AttachmentRecord] = []
    for leaf in leaves:
        if len(out) >= MAX_ATTACHMENTS:
            errors.append(f"more than {MAX_ATTACHMENTS} attachments; the rest not listed")
            break
        disposition = (leaf.disposition or "").lower()
        filename = leaf.filename
        if disposition != "attachment" and not filename:
            continue
        data = leaf.payload() or b""
        content_ids = parse_msg_ids(leaf.content_id or "")
        out.append(
            {
                "filename": decode_text(filename) if filename else None,
                "content_type": leaf.content_type,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_id": content_ids[0] if content_ids else None,
            }
        )
    return out


def _bodies(leaves: list[Leaf], errors: list[str]) -> tuple[str | None, str | None]:
    text = html = None
    for leaf in leaves:
        if (leaf.disposition or "") == "attachment":
            continue
        ctype = leaf.content_type
        if ctype == "text/plain" and text is None:
            text = _clip_body("text", _decode_part(leaf), errors)
        elif ctype == "text/html" and html is None:
            html = _clip_body("html", _decode_part(leaf), errors)
    return text, html


def _clip_body(kind: str, value: str | None, errors: list[str]) -> str | None:
    if value is None:
        return None
    kept = clip_utf8(value)
    if kept is not value:
        size = len(value.encode("utf-8", "surrogatepass"))
        errors.append(f"{kind} body cut to {MAX_BODY_BYTES} of its {size} bytes")
    return kept


def _parse_mime(
    raw: bytes, header_block: bytes, errors: list[str], *, fast: bool = True
) -> tuple[Message | None, list[Leaf] | None]:
    """The message's headers and, when the fast path read them, its leaves.

    The fast path (mail/mime.py) answers for plain messages; everything else, and every
    call with ``fast=False``, is the stdlib parse (its leaves are then walked by the caller).
    When the MIME nesting is deeper than the stdlib's recursion can follow, the header block
    alone is parsed: the event is still whole; only the body is not read.
    """
    if fast:
        read = parse_fast(raw, header_block)
        if read is not None:
            return read.message, read.leaves
    try:
        # compat32 keeps headers as raw strings: we decode them ourselves and never trip on
        # the lazy header objects of the modern policy.
        msg = parse_stdlib(raw)
    except RecursionError:
        errors.append("MIME nesting too deep to parse; body not read")
        try:
            return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
                raw
            ), None
        except Exception as exc:
            errors.append(f"unparseable header block: {type(exc).__name__}: {exc}")
            return None, None
    except Exception as exc:  # the stdlib parser is lenient, but be certain
        errors.append(f"unparseable message: {type(exc).__name__}: {exc}")
        return None, None
    for defect in msg.defects:
        errors.append(f"MIME defect: {type(defect).__name__}")
    return msg, None


def parse_message(
    fetched: FetchedMessage,
    *,
    log_attachments: bool = True,
    producer: str = "",
    now: datetime | None = None,
    fast: bool = True,
) -> tuple[MessageEvent, BodyEvent]:
    """Both events of one fetched message, as models. Never raises for malformed mail."""
    message, body = parse_records(
        fetched, log_attachments=log_attachments, producer=producer, now=now, fast=fast
    )
    return MessageEvent.model_validate(message), BodyEvent.model_validate(body)


class _Fields:
    """How ``parse_records`` reads one message's fields: each extraction that can fail on
    hostile mail records why in ``errors`` and falls back to a default (none at all when
    there is no parsed message).

    A class, not nested functions: compiled by mypyc, nested functions share one environment
    object that holds them and that each of them holds, a reference cycle per message. It
    kept the whole parse (the indexed message, its leaves, ~34 objects) alive until the
    cyclic collector ran, which then took 20-40% of a parse worker's CPU freeing them."""

    __slots__ = ("msg", "errors")

    def __init__(self, msg: Message | None, errors: list[str]) -> None:
        self.msg = msg
        self.errors = errors

    def header(self, name: str) -> str | None:
        if self.msg is None:
            return None
        try:
            # Through Any, not the stub's str: compat32 hands back an email.header.Header for
            # a value with 8-bit bytes, and the compiled module checks a typed call's result.
            value = cast(Any, self.msg).get(name)
        except Exception as exc:
            self.errors.append(f"bad {name} header: {exc}")
            return None
        return None if value is None else str(value)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    def addresses(self, name: str) -> list[AddressRecord]:
        if self.msg is None:
            return []
        try:
            return _addresses(self.msg, name, self.errors)
        except Exception as exc:
            self._failed(name, exc)
            return []

    def id_list(self, name: str) -> tuple[list[str], int]:
        return cap_references(parse_msg_ids(self.header(name)), MAX_REFERENCES)

    def stdlib_leaves(self) -> list[Leaf]:
        if self.msg is None:
            return []
        try:
            return [StdlibLeaf(part) for part in leaf_parts(self.msg, self.errors)]
        except Exception as exc:
            self._failed("MIME", exc)
            return []

    def attachments(self, leaves: list[Leaf]) -> list[AttachmentRecord]:
        if self.msg is None:
            return []
        try:
            return _attachments(leaves, self.errors)
        except Exception as exc:
            self._failed("attachments", exc)
            return []

    def bodies(self, leaves: list[Leaf]) -> tuple[str | None, str | None]:
        if self.msg is None:
            return None, None
        try:
            return _bodies(leaves, self.errors)
        except Exception as exc:
            self._failed("body", exc)
            return None, None

    def date(self) -> datetime | None:
        if self.msg is None:
            return None
        try:
            return _date(self.msg)
        except Exception as exc:
            self._failed("Date", exc)
            return None

    def automated(self) -> AutomaticKind | None:
        if self.msg is None:
            return None
        try:
            return automatic_kind(self.header)
        except Exception as exc:
            self._failed("automatic", exc)
            return None


def parse_records(
    fetched: FetchedMessage,
    *,
    log_attachments: bool = True,
    producer: str = "",
    now: datetime | None = None,
    fast: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both events of one message as Avro records: the dicts ``model_dump(by_alias=True)`` of
    the models would give (``parse_message`` validates them into the models, which every
    parse test goes through), built without validating what the types here already guarantee.
    This is the backfill's hot path. Never raises for malformed mail.

    ``fast=False`` parses with the stdlib only (the reference the fast path is tested against).
    """
    observed = utc_millis(now or datetime.now(UTC))
    raw = fetched.raw
    size = fetched.size if fetched.size is not None else len(raw)
    header_block = split_header_block(raw)
    errors: list[str] = []

    msg, fast_leaves = _parse_mime(raw, header_block, errors, fast=fast)
    fields = _Fields(msg, errors)
    header = fields.header

    ids = parse_msg_ids(header("Message-ID"))
    synthetic = not ids
    message_id = ids[0] if ids else synthetic_message_id(header_block)

    from_list = fields.addresses("From")
    leaves = fast_leaves if fast_leaves is not None else fields.stdlib_leaves()
    attachments = fields.attachments(leaves)
    text, html = fields.bodies(leaves)
    references, references_dropped = fields.id_list("References")
    if references_dropped:
        errors.append(
            f"References: {references_dropped} ids dropped (kept the first and the last "
            f"{MAX_REFERENCES - 1})"
        )
    in_reply_to, _ = fields.id_list("In-Reply-To")
    subject = header("Subject")
    if subject is not None:
        subject, clipped = clip_text(subject)
        if clipped:
            errors.append(f"Subject cut to its first {len(subject)} characters")
    kept_headers = header_block[:MAX_RAW_HEADER_BYTES]
    if len(kept_headers) < len(header_block):
        errors.append(f"raw headers cut to {MAX_RAW_HEADER_BYTES} of {len(header_block)} bytes")
    to, cc, bcc = fields.addresses("To"), fields.addresses("Cc"), fields.addresses("Bcc")
    reply_to = fields.addresses("Reply-To")
    eid = message_identity(fetched)
    date = fields.date()
    date = None if date is None else utc_millis(date)
    internal_date = None if fetched.internal_date is None else utc_millis(fetched.internal_date)
    parse_error = "; ".join(dict.fromkeys(errors))[:MAX_PARSE_ERROR_CHARS] or None
    folder = utf8_safe(fetched.folder)

    message_record: dict[str, Any] = {
        "event_id": eid,
        "event_type": "message.new",
        "inbox_id": fetched.inbox_id,
        "folder": folder,
        "folder_role": role_of(fetched),
        "uidvalidity": fetched.uidvalidity,
        "uid": fetched.uid,
        "modseq": fetched.modseq,
        "message_id": message_id,
        "message_id_synthetic": synthetic,
        "in_reply_to": in_reply_to,
        "references": references,
        "references_dropped": references_dropped,
        "subject": decode_text(subject),
        "from": from_list[0] if from_list else None,
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "reply_to": reply_to,
        "date": date,
        "internal_date": internal_date,
        "size": size,
        "flags": list(fetched.flags),
        "has_attachments": bool(attachments),
        "raw_headers": kept_headers,
        "parse_error": parse_error,
        "observed_at": observed,
        "producer": producer,
        "automated": fields.automated(),
        "gm_msgid": fetched.gm_msgid,
        "gm_labels": [utf8_safe(label) for label in fetched.gm_labels],
    }

    skipped: str | None = None
    if not log_attachments:
        skipped = "attachment logging is off for this inbox"
    elif size >= ATTACHMENT_LOG_LIMIT:
        skipped = f"message is {size} bytes, not under the 50 MB attachment limit"
    body_record: dict[str, Any] = {
        "event_id": eid,
        "inbox_id": fetched.inbox_id,
        "folder": folder,
        "uidvalidity": fetched.uidvalidity,
        "uid": fetched.uid,
        "message_id": message_id,
        "text": text,
        "html": html,
        "attachments": [] if skipped else attachments,
        "attachments_logged": skipped is None,
        "attachments_skipped_reason": skipped,
        "size": size,
        "date": date,
        "internal_date": internal_date,
        "parse_error": parse_error,
        "observed_at": observed,
    }
    return message_record, body_record

"""The MIME tree of a message, read fast when it is plain and by the stdlib when it is not.

The stdlib's ``email`` parser walks every line in Python (about 300 µs for a 5 KB message);
``fast_mail_parser`` (Rust, fuzzed, with its own nesting cap) splits the same message in about
12 µs. Its answers are not the stdlib's in every corner, though: it unfolds and RFC 2047-decodes
part headers, writes quoted-printable line ends as CRLF, refuses bad base64 whole, and reads
boundaries by prefix. So the fast path is taken only for messages where the two provably agree,
and every meaning (content type, charset, filename, disposition, transfer decoding of the text
we keep) is still computed by the stdlib's own code on the same strings:

* the top-level header block is split here exactly as ``email.feedparser`` splits it (compat32
  values: name, value with its folding kept), so every header we read is the stdlib's string;
* the tree comes from ``fast_mail_parser`` and each leaf's headers go into a compat32
  ``Message`` so ``get_content_type`` and friends run unchanged; the leaf's bytes are the
  transfer-decoded content it returns;
* anything outside the plain subset (lone CR or LF, an odd header line, ``message/*`` parts,
  a boundary that is a prefix of a line, encoded words or non-ASCII in part headers, a folded
  quoted filename, an unknown transfer encoding, bad base64) answers ``None``, and the caller
  parses with the stdlib as before. ``tests/unit/mail/test_mime.py`` checks that wherever the
  fast path answers, both paths give the same events.
"""

from __future__ import annotations

import binascii
import email
import email.parser
import email.policy
import functools
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any, Protocol

import fast_mail_parser as _fmp

from inboxstream.mail.limits import MAX_MIME_DEPTH, MAX_MIME_PARTS

_COMPAT32 = email.policy.compat32
#: Transfer encodings whose decoding the two parsers share (the stdlib's lower-cased value).
_KNOWN_CTE = frozenset({"", "7bit", "8bit", "binary", "base64", "quoted-printable"})
#: Part headers whose strings the stdlib parses for meaning (type, charset, filename, id).
_MEANINGFUL = ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "Content-ID")
_MEANINGFUL_LOWER = frozenset(name.lower() for name in _MEANINGFUL)


class Leaf(Protocol):
    """One non-multipart part, with what the producer reads of it (the stdlib's meanings)."""

    @property
    def content_type(self) -> str: ...
    @property
    def disposition(self) -> str | None: ...
    @property
    def filename(self) -> str | None: ...
    @property
    def charset(self) -> str | None: ...
    @property
    def content_id(self) -> str | None: ...
    def payload(self) -> bytes | None: ...


class StdlibLeaf:
    """A part of the stdlib's parse; each meaning is the stdlib's call, made when asked (so a
    part whose header trips the stdlib fails only the field that reads it)."""

    __slots__ = ("part", "_payload", "_decoded")

    def __init__(self, part: Message) -> None:
        self.part = part
        self._payload: bytes | None = None
        self._decoded = False

    @property
    def content_type(self) -> str:
        return self.part.get_content_type()

    @property
    def disposition(self) -> str | None:
        return self.part.get_content_disposition()

    @property
    def filename(self) -> str | None:
        return self.part.get_filename()

    @property
    def charset(self) -> str | None:
        return self.part.get_content_charset()

    @property
    def content_id(self) -> str | None:
        value = self.part.get("Content-ID")
        return None if value is None else str(value)

    def payload(self) -> bytes | None:
        if not self._decoded:
            value = self.part.get_payload(decode=True)
            self._payload = value if isinstance(value, bytes) else None
            self._decoded = True
        return self._payload


@dataclass(frozen=True, slots=True)
class FastLeaf:
    """A part the fast path read: meanings computed by the stdlib from the same strings,
    bytes transfer-decoded by the Rust parser."""

    content_type: str
    disposition: str | None
    filename: str | None
    charset: str | None
    content_id: str | None
    content: bytes

    def payload(self) -> bytes | None:
        return self.content


@dataclass(frozen=True)
class FastMail:
    """What the fast path read: the top-level headers and the leaves in document order."""

    message: Message
    leaves: list[Leaf]


class IndexedMessage(Message):
    """A compat32 header-only ``Message`` whose lookups go through a dict by lower-cased name.

    ``Message.get`` scans every header and lower-cases every name on each call (a message is
    read for about twenty fields); this answers the same values, through the same policy
    call, in one dict lookup.
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(policy=_COMPAT32)
        self._headers = pairs  # what set_raw builds, pair by pair
        index: dict[str, list[str]] = {}
        for name, value in pairs:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    def raw_values(self, name: str) -> list[str]:
        """The stored strings of one field, before the policy's fetch step."""
        return self._index.get(name.lower(), [])

    def get(self, name: str, failobj: Any = None) -> Any:
        values = self._index.get(name.lower())
        if not values:
            return failobj
        return self.policy.header_fetch_parse(name, values[0])

    def get_all(self, name: str, failobj: Any = None) -> Any:
        values = self._index.get(name.lower())
        if not values:
            return failobj
        return [self.policy.header_fetch_parse(name, v) for v in values]


#: One header field of a CRLF-only block as ``email.feedparser`` reads it: a name of the
#: characters its ``headerRE`` accepts, a colon, blanks it strips, the value with its folding.
_FIELD_RE = re.compile(r"([\041-\071\073-\176]+):[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)(?:\r\n|\Z)")


def split_header_lines(block: bytes) -> list[tuple[str, str]] | None:
    """The (name, value) pairs ``email.feedparser`` (compat32) would store for a CRLF-only
    header block, or ``None`` when the block holds anything the feedparser treats specially
    (an envelope ``From `` line, a first line that is a continuation, a line that is neither a
    header nor a continuation): those take the stdlib path.

    compat32's value is the first line after the colon, left-stripped of blanks, followed by
    each continuation line with the CRLF before it; the last CRLF is not part of it.
    """
    text = block.decode("ascii", "surrogateescape")
    end = len(text) - 2 if text.endswith("\r\n\r\n") else len(text)
    pairs: list[tuple[str, str]] = []
    pos = 0
    match = _FIELD_RE.match
    while pos < end:
        found = match(text, pos)
        if found is None or found.end() == pos:
            return None
        pairs.append((found[1], found[2]))
        pos = found.end()
    return pairs if pos >= end else None


def parse_fast(raw: bytes, header_block: bytes) -> FastMail | None:
    """The message's headers and leaves, or ``None`` where the fast path is not certain to
    agree with the stdlib parser (the caller then uses the stdlib)."""
    # Lone CR or LF: the stdlib splits lines on either, and the Rust quoted-printable decoder
    # writes CRLF where the stdlib keeps LF. IMAP servers send CRLF, so this is rare.
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        return None
    # Encoded words past the top headers may sit in part headers, which the Rust parser
    # decodes (the stdlib leaves them to us): let the stdlib read those messages.
    if raw.find(b"=?", len(header_block)) >= 0:
        return None
    pairs = split_header_lines(header_block)
    if pairs is None:
        return None
    top = IndexedMessage(pairs)
    try:
        tree = _fmp.parse_email_tree(raw, mode="lazy")
        leaves = _leaves(tree, raw, top, min(len(header_block) + 2, len(raw)))
    except Exception:  # refused (bad base64, nesting cap) or a corner we do not follow
        return None
    return None if leaves is None else FastMail(top, leaves)


@dataclass(frozen=True, slots=True)
class _Meaning:
    """What the stdlib reads from a part's Content-* headers; ``None`` for the whole thing
    when the strings are not plain (the fast path then steps aside)."""

    content_type: str
    multipart: bool
    boundary: str | None
    cte: str
    disposition: str | None
    filename: str | None
    charset: str | None
    content_id: str | None


def _leaves(tree: Any, raw: bytes, top: IndexedMessage, body_start: int) -> list[Leaf] | None:
    """The leaves in document order, each checked to read as the stdlib reads it.

    Each node carries where its body lies in ``raw`` (found from the delimiters, which
    ``_plain_boundary`` proved exact), so a quoted-printable leaf is decoded from its own bytes
    by the stdlib's decoder (``binascii.a2b_qp``): the Rust one drops bytes outside printable
    ASCII and blanks before a line end, and keeps the CRLF of a soft break ending the part.
    """
    leaves: list[Leaf] = []
    seen = 0
    stack: list[tuple[Any, int, int, int]] = [(tree, 0, body_start, len(raw))]
    while stack:
        node, depth, start, end = stack.pop()
        seen += 1
        if seen > MAX_MIME_PARTS or depth > MAX_MIME_DEPTH or node.is_message:
            return None  # the stdlib path names what it leaves unread; it reads sub-messages
        meaning = _meaning_of(top if depth == 0 else None, node.headers)
        if meaning is None:
            return None
        children = node.children
        if meaning.multipart:
            if not children or not meaning.boundary or not _plain_boundary(raw, meaning.boundary):
                return None
            spans = _child_spans(raw, start, end, meaning.boundary)
            if spans is None or len(spans) != len(children):
                return None
            stack.extend(
                (c, depth + 1, _body_start(raw, s, e), e)
                for c, (s, e) in zip(reversed(children), reversed(spans), strict=True)
            )
            continue
        if children:
            return None
        if meaning.cte == "quoted-printable":
            content = binascii.a2b_qp(raw[start:end])
        else:
            content = node.content
        leaves.append(
            FastLeaf(
                meaning.content_type,
                meaning.disposition,
                meaning.filename,
                meaning.charset,
                meaning.content_id,
                content if isinstance(content, bytes) else b"",
            )
        )
    return leaves


def _child_spans(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]] | None:
    """Where each part of a multipart body lies (headers included), between its delimiters.

    A delimiter line's CRLF before it belongs to the delimiter, as RFC 2046 and the stdlib
    read it; the body's first line follows the header block's blank line, whose CRLF serves.
    """
    marker = b"\r\n--" + boundary.encode("ascii")
    spans: list[tuple[int, int]] = []
    part_start = -1
    at = raw.find(marker, max(start - 2, 0), end)
    while at >= 0:
        after = at + len(marker)
        if part_start >= 0:
            spans.append((part_start, at))
        if raw.startswith(b"--", after):
            return spans
        part_start = after + 2  # past the delimiter line's CRLF (checked by _plain_boundary)
        at = raw.find(marker, after, end)
    return None  # no close delimiter inside this body


def _body_start(raw: bytes, start: int, end: int) -> int:
    """Where a part's body begins: after the blank line ending its headers (none: empty)."""
    if raw.startswith(b"\r\n", start):
        return start + 2
    blank = raw.find(b"\r\n\r\n", start, end)
    return end if blank < 0 else blank + 4


def _meaning_of(top: IndexedMessage | None, headers: dict[str, list[str]]) -> _Meaning | None:
    """The part's meaning from its Content-* values (the top level's from our own split)."""
    if top is not None:
        key = tuple(tuple(top.raw_values(name)) for name in _MEANINGFUL)
    else:
        found: dict[str, tuple[str, ...]] = {}
        for name, values in headers.items():
            low = name.lower()
            if low in _MEANINGFUL_LOWER:
                if low in found:
                    return None  # one field under two spellings: order between them is lost
                found[low] = tuple(values)
        key = tuple(found.get(name.lower(), ()) for name in _MEANINGFUL)
    return _meaning(key)


@functools.lru_cache(maxsize=4096)
def _meaning(values: tuple[tuple[str, ...], ...]) -> _Meaning | None:
    """Cached by the header strings: a mailbox repeats the same few Content-Type lines, and
    the stdlib's parameter parser is the costliest call left on the fast path. The values are
    the stdlib's own answers on a ``Message`` holding exactly these headers."""
    if any(not v.isascii() for vs in values for v in vs):
        return None  # decoded or 8-bit: not the raw string the stdlib would parse
    if len(values[0]) > 1:
        return None  # two Content-Type lines: parsers disagree on which one wins
    msg = IndexedMessage([(n, v) for n, vs in zip(_MEANINGFUL, values, strict=True) for v in vs])
    ctype = msg.get_content_type()
    if msg.get_content_maintype() == "message" or ctype == "multipart/digest":
        return None  # sub-messages and digests: the stdlib reads them as messages
    cte = str(msg.get("content-transfer-encoding", "")).lower()
    multipart = msg.get_content_maintype() == "multipart"
    if multipart and cte not in ("", "7bit", "8bit", "binary"):
        return None  # the stdlib reports a defect there
    if cte not in _KNOWN_CTE:
        return None
    filename = msg.get_filename()
    if filename is not None and any(c.isspace() for c in filename):
        return None  # a folded quoted filename would be unfolded by the Rust parser
    cid = msg.get("Content-ID")
    return _Meaning(
        content_type=ctype,
        multipart=multipart,
        boundary=msg.get_boundary() if multipart else None,
        cte=cte,
        disposition=msg.get_content_disposition(),
        filename=filename,
        charset=msg.get_content_charset(),
        content_id=None if cid is None else str(cid),
    )


def _plain_boundary(raw: bytes, boundary: str) -> bool:
    """Every line that starts with ``--boundary`` is exactly a delimiter (``--b`` or ``--b--``)
    and both kinds are there: then a prefix match and the stdlib's exact match find the same
    parts, and the stdlib reports no missing start or close boundary."""
    if not boundary.isascii() or any(c.isspace() for c in boundary):
        return False
    marker = b"\r\n--" + boundary.encode("ascii")
    opened = closed = False
    at = raw.find(marker)
    while at >= 0:
        end = at + len(marker)
        tail = raw[end : end + 4]
        if tail.startswith(b"\r\n"):
            opened = True
        elif tail == b"--\r\n" or (tail == b"--" and end + 2 == len(raw)):
            closed = True
        else:
            return False
        at = raw.find(marker, end)
    return opened and closed


def parse_stdlib(raw: bytes) -> Message:
    """The stdlib's compat32 parse (raises what it raises; the caller handles it)."""
    return email.message_from_bytes(raw, policy=_COMPAT32)

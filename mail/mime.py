"""The MIME tree of a message, read fast when it is plain and by the stdlib when it is not.

The stdlib's ``email`` parser walks every line in Python (about 300 µs for a 5 KB message). The
fast path does not walk lines: it finds the structure with a few byte searches and leaves
every meaning to the stdlib's own code on the very strings the stdlib would store:

* every header block (the message's and each part's) is split here exactly as
  ``email.feedparser`` splits it (compat32 values: name, value with its folding kept);
* each part's Content-* strings are read by the stdlib (``get_content_type``, ``get_boundary``,
  ``get_filename``... on a compat32 ``Message`` holding just them, cached by their shape);
* the parts lie between the delimiter lines, found by searching for ``CRLF--boundary``, and
  each leaf's content is decoded from its own bytes as ``get_payload(decode=True)`` decodes it
  (``binascii.a2b_qp``; for base64 the stdlib's ``decode_b``, or a SIMD decoder where the
  answer cannot differ);
* anything outside the plain subset (a blank line the stdlib would see elsewhere, an odd
  header line, ``message/*`` parts, a delimiter after a lone CR or LF or one that prefixes a
  line, a missing close delimiter, non-ASCII in part headers, an unknown transfer encoding)
  answers ``None``, and the caller parses with the stdlib as before.
  ``tests/unit/mail/test_mime.py`` checks that wherever the fast path answers, both paths give
  the same events.

It replaced ``fast_mail_parser`` (Rust), which split the tree in ~12 µs but whose answers
needed re-deriving (it unfolds and decodes part headers, drops bytes in quoted-printable,
refuses bad base64 whole): with the Rust tree, the checks around it and its header dicts the
fast path took 56 µs a message on the benchmark corpus; without it, 30.
"""

from __future__ import annotations

import binascii
import dataclasses
import email
import email.parser
import email.policy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from email._encoded_words import decode_b
from email.message import Message
from typing import Any, Protocol

import pybase64

from inboxstream.mail.limits import MAX_MIME_DEPTH, MAX_MIME_PARTS

_COMPAT32 = email.policy.compat32
#: Transfer encodings whose decoding the two parsers share (the stdlib's lower-cased value).
_KNOWN_CTE = frozenset({"", "7bit", "8bit", "binary", "base64", "quoted-printable"})
#: Part headers whose strings the stdlib parses for meaning (type, charset, filename, id).
_MEANINGFUL = ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "Content-ID")
_MEANINGFUL_ORDER = tuple(name.lower() for name in _MEANINGFUL)
_MEANINGFUL_LOWER = frozenset(_MEANINGFUL_ORDER)


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
    bytes transfer-decoded as the stdlib decodes them."""

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
        # Through Any: the stub says str, but compat32 hands back an email.header.Header for
        # a value with 8-bit bytes, and the compiled module checks a typed call's result.
        policy: Any = self.policy
        return policy.header_fetch_parse(name, values[0])

    def get_all(self, name: str, failobj: Any = None) -> Any:
        values = self._index.get(name.lower())
        if not values:
            return failobj
        policy: Any = self.policy  # as in get
        return [policy.header_fetch_parse(name, v) for v in values]


#: One header field of a CRLF-only block as ``email.feedparser`` reads it: a name of the
#: characters its ``headerRE`` accepts, a colon, blanks it strips, the value with its folding.
_FIELD_RE = re.compile(r"([\041-\071\073-\176]+):[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)(?:\r\n|\Z)")


def _split_header_lines_py(block: bytes) -> list[tuple[str, str]] | None:
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


#: The same split in C (``mail/_headers_native.c``, built by ``pip install``): the regex walk
#: was ~8 us of a worker's ~110 a message. The Python version above is its reference (the
#: property tests hold the two to one answer) and stands in where the module is not built.
split_header_lines: Callable[[bytes], list[tuple[str, str]] | None]
try:
    from inboxstream.mail._headers_native import split_header_lines
except ImportError:
    split_header_lines = _split_header_lines_py


def parse_fast(raw: bytes, header_block: bytes) -> FastMail | None:
    """The message's headers and leaves, or ``None`` where the fast path is not certain to
    agree with the stdlib parser (the caller then uses the stdlib)."""
    # The header block as the server sent it, then its blank line (CRLF), or no body at all;
    # a blank line the stdlib would find elsewhere (a lone LF) takes the stdlib path.
    size = len(header_block)
    if not raw.startswith(header_block):
        return None
    if raw.startswith(b"\r\n", size):
        body_start = size + 2
    elif size == len(raw):
        body_start = size
    else:
        return None
    pairs = split_header_lines(header_block)
    if pairs is None:
        return None
    top = IndexedMessage(pairs)
    leaves = _leaves(raw, top, body_start)
    return None if leaves is None else FastMail(top, leaves)


#: One part waiting to be read: its header fields (``None``: the top level's, in ``top``),
#: depth, and where its body lies in the message.
_Pending = tuple[list[tuple[str, str]] | None, int, int, int]


def _leaves(raw: bytes, top: IndexedMessage, body_start: int) -> list[Leaf] | None:
    """The leaves in document order, each read as the stdlib reads it.

    Each part's body is found from the delimiters (``_plain_boundary`` proved them exact),
    its header block split by the same rule as the top level's, and its content decoded from
    its own bytes by the stdlib's own decoders, as ``Message.get_payload(decode=True)`` does.
    """
    leaves: list[Leaf] = []
    seen = 0
    stack: list[_Pending] = [(None, 0, body_start, len(raw))]
    while stack:
        pairs, depth, start, end = stack.pop()
        seen += 1
        if seen > MAX_MIME_PARTS or depth > MAX_MIME_DEPTH:
            return None  # the stdlib path names what it leaves unread
        meaning = _meaning_of(top, pairs)
        if meaning is None:
            return None
        if meaning.multipart:
            boundary = meaning.boundary
            # A part reusing the boundary around it needs no check of its own: the outer
            # delimiters cut it before its close delimiter, and that reads as no close.
            if not boundary or not _plain_boundary(raw, boundary):
                return None
            spans = _child_spans(raw, start, end, boundary)
            if spans is None:
                return None
            children: list[_Pending] = []
            for part_start, part_end in spans:
                part = _part_headers(raw, part_start, part_end)
                if part is None:
                    return None
                fields, part_body = part
                children.append((fields, depth + 1, part_body, part_end))
            stack.extend(reversed(children))
            continue
        leaves.append(
            FastLeaf(
                meaning.content_type,
                meaning.disposition,
                meaning.filename,
                meaning.charset,
                meaning.content_id,
                _content(raw[start:end], meaning.cte),
            )
        )
    return leaves


def _content(body: bytes, cte: str) -> bytes:
    """``get_payload(decode=True)`` of a compat32 part whose payload is ``body`` (the known
    transfer encodings only: ``_meaning`` sends the others to the stdlib path)."""
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)  # what quopri.decodestring calls
    if cte == "base64":
        return _base64(b"".join(body.splitlines()))
    return body


def _base64(joined: bytes) -> bytes:
    """``email._encoded_words.decode_b(joined)[0]``, the stdlib's reading of a base64 part,
    with a SIMD decoder where the answer cannot differ.

    The stdlib first decodes strictly (binascii, ~0.3 GB/s: 60 us for a 30 KB attachment,
    most of the fast path's time on mail that has one), padding what is missing. Where that
    padded string is canonical base64 (``=`` only as the last one or two characters), any
    strict decoder gives the same bytes, so ``pybase64`` decodes it; anything else (a bad
    character, padding inside) takes the stdlib's own function and its fallbacks.
    """
    missing = -len(joined) % 4
    if missing != 3:  # three missing: the stdlib's strict attempt fails, its fallbacks decide
        padded = joined + b"=" * missing
        data = padded.rstrip(b"=")
        if len(padded) - len(data) <= 2 and b"=" not in data:
            try:
                return pybase64.b64decode(padded, validate=True)
            except ValueError:  # binascii.Error: a character outside the alphabet
                pass
    value, _defects = decode_b(joined)
    return bytes(value)


def _part_headers(raw: bytes, start: int, end: int) -> tuple[list[tuple[str, str]], int] | None:
    """A part's header fields and where its body begins (after the blank line; none: the
    part is all headers and its body is empty). ``None`` when the block is not plain."""
    if raw.startswith(b"\r\n", start):
        # no headers; the body after the blank line, empty where that CRLF is the next
        # delimiter's (never past ``end``: a reversed range, sliced compiled, raises)
        return [], min(start + 2, end)
    blank = raw.find(b"\r\n\r\n", start, end)
    block = raw[start:end] if blank < 0 else raw[start : blank + 2]
    fields = split_header_lines(block)
    if fields is None:
        return None
    return fields, end if blank < 0 else blank + 4


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
            if at < part_start:
                # Two delimiters sharing one CRLF ("--b\r\n--b"): the stdlib reads no part
                # where this would read an empty one, so it reads the message. (The reversed
                # span, sliced compiled, was not b"" as in Python: mypyc passes the negative
                # length on and PyBytes_FromStringAndSize raises SystemError.)
                return None
            spans.append((part_start, at))
        if raw.startswith(b"--", after):
            return spans
        part_start = after + 2  # past the delimiter line's CRLF (checked by _plain_boundary)
        at = raw.find(marker, after, end)
    return None  # no close delimiter inside this body


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


def _meaning_of(top: IndexedMessage, pairs: list[tuple[str, str]] | None) -> _Meaning | None:
    """The part's meaning from its Content-* values, each field's values in header order
    under any spelling of its name, as ``Message.get`` finds them (``None``: the top level)."""
    if pairs is None:
        key = tuple(tuple(top.raw_values(name)) for name in _MEANINGFUL)
    else:
        found: dict[str, list[str]] = {}
        for name, value in pairs:
            low = name.lower()
            if low in _MEANINGFUL_LOWER:
                found.setdefault(low, []).append(value)
        key = tuple(tuple(found.get(low, ())) for low in _MEANINGFUL_ORDER)
    return _meaning_by_shape(key)


#: A Content-Type whose only parameter is its boundary, last, quoted or not, of RFC 2046's
#: boundary characters but the space: the stdlib reads exactly those characters back as the
#: boundary (no quote, backslash, blank or ``;`` that its parameter parser would treat).
_BOUNDARY_ONLY = re.compile(
    r"([^;\\\"]*;[ \t\r\n]*boundary=)(\"?)([0-9A-Za-z'()+_,./:=?-]{1,200})\2"
)
#: What stands in for the boundary in the cache key: every multipart part has a boundary of
#: its own, so keyed by the whole string each one missed the cache (21 us a miss, a third of
#: the parts of a mailbox).
_PLACEHOLDER = "inboxstream-boundary"


def _meaning_by_shape(key: tuple[tuple[str, ...], ...]) -> _Meaning | None:
    """``_meaning(key)``, cached by the headers' shape: a lone boundary parameter is read
    with a placeholder in its place, then the boundary is put back. The stdlib must have read
    the placeholder as the boundary, else the key is read as it is."""
    ctype = key[0]
    if len(ctype) == 1:
        found = _BOUNDARY_ONLY.fullmatch(ctype[0])
        if found is not None:
            quote = found[2]
            general = _meaning(((f"{found[1]}{quote}{_PLACEHOLDER}{quote}",), *key[1:]))
            if general is not None and general.boundary == _PLACEHOLDER:
                return dataclasses.replace(general, boundary=found[3])
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


_BLANK = re.compile(r"\s")


def _plain_boundary(raw: bytes, boundary: str) -> bool:
    """Every line that starts with ``--boundary`` is exactly a delimiter (``--b`` or ``--b--``)
    and both kinds are there: then a prefix match and the stdlib's exact match find the same
    parts, and the stdlib reports no missing start or close boundary.

    Every ``--boundary`` in the message must follow a CRLF: the stdlib ends lines at a lone CR
    or LF too, so a delimiter after one would be a line start to it and not to the search.
    (A ``--boundary`` at a line start cannot overlap another, the boundary holding no CR or
    LF, so the count sees each one.)"""
    if not boundary.isascii() or _BLANK.search(boundary):
        return False
    dashed = b"--" + boundary.encode("ascii")
    marker = b"\r\n" + dashed
    opened = closed = False
    found = 0
    at = raw.find(marker)
    while at >= 0:
        found += 1
        end = at + len(marker)
        tail = raw[end : end + 4]
        if tail.startswith(b"\r\n"):
            opened = True
        elif tail == b"--\r\n" or (tail == b"--" and end + 2 == len(raw)):
            closed = True
        else:
            return False
        at = raw.find(marker, end)
    return opened and closed and raw.count(dashed) == found


def parse_stdlib(raw: bytes) -> Message:
    """The stdlib's compat32 parse (raises what it raises; the caller handles it)."""
    return email.message_from_bytes(raw, policy=_COMPAT32)

"""The MIME fast path gives the stdlib path's events wherever it answers.

The oracle is ``parse_records(..., fast=False)`` (the stdlib parser only, as before the fast
path existed). Every corpus here runs through both; the records must be equal, field by field.
Where the fast path steps aside is checked too, so a silent fallback on everything could not
pass as agreement.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import quopri
from datetime import UTC, datetime
from email._encoded_words import decode_b

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.mail import mime
from inboxstream.mail.mime import _split_header_lines_py, parse_fast, split_header_lines
from inboxstream.producers.parse import FetchedMessage, parse_records, split_header_block
from tests.helpers.hostile import hostile_corpus

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def fetched(raw: bytes) -> FetchedMessage:
    return FetchedMessage("i@x.test", "INBOX", "inbox", 7, 3, raw)


def both(raw: bytes) -> tuple[object, object]:
    f = fetched(raw)
    return (
        parse_records(f, now=NOW, fast=True),
        parse_records(f, now=NOW, fast=False),
    )


def takes_fast_path(raw: bytes) -> bool:
    return parse_fast(raw, split_header_block(raw)) is not None


def crlf(raw: bytes) -> bytes:
    """What an IMAP server sends: every line ending CRLF (the generator writes LF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_generator_corpus_same_records_and_all_fast() -> None:
    mails = [crlf(m.raw) for m in generate_mailbox("owner@demo.example", threads=300, seed=11)]
    assert len(mails) > 900
    fast = 0
    for raw in mails:
        got, want = both(raw)
        assert got == want
        fast += takes_fast_path(raw)
    # The generator writes only plain MIME: every message is read by the fast path.
    assert fast == len(mails)


def test_lf_only_mail_steps_aside_and_still_agrees() -> None:
    for mail in generate_mailbox("owner@demo.example", threads=20, seed=3):
        raw = mail.raw.replace(b"\r\n", b"\n")
        assert not takes_fast_path(raw)
        got, want = both(raw)
        assert got == want


def test_hostile_corpus_same_records() -> None:
    for raw in hostile_corpus():
        got, want = both(raw)
        assert got == want


def _mime(parts: list[bytes], boundary: bytes = b"BB", extra: bytes = b"") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return (
        b"From: A <a@x.test>\r\nTo: b@y.test\r\nSubject: odd\r\nMessage-ID: <odd@x>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n'
        + extra
        + b"\r\n"
        + body
        + b"--"
        + boundary
        + b"--\r\n"
    )


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello there"


def _empty_part(between: bytes) -> bytes:
    """A multipart whose first part is ``between`` alone (no headers, no body line)."""
    head = b'From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
    return head + b"\r\n--b\r\n" + between + b"--b\r\n" + TEXT + b"\r\n--b--\r\n"


HTML = b"Content-Type: text/html\r\n\r\n<p>hi</p>"
QP = (
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\nGr=FC=DFe, a soft=\r\nbreak and =3D signs\r\n"
)
B64_ATTACH = (
    b"Content-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; "
    b"filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n"
)

#: Messages in the corners where the two parsers could part, each with whether the fast path
#: is expected to answer (True) or to hand the message to the stdlib (False).
ODD: list[tuple[str, bytes, bool]] = [
    ("plain text, no MIME", b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n", True),
    ("no body at all", b"From: a@x\r\nSubject: s\r\n", True),
    ("headers only, blank line", b"From: a@x\r\n\r\n", True),
    ("multipart text+html+attachment", _mime([TEXT, HTML, B64_ATTACH]), True),
    ("quoted-printable latin-1", _mime([QP]), True),
    # quoted-printable is decoded from the part's own bytes by the stdlib's decoder, so the
    # corners where a decoder of its own could differ still take the fast path
    ("quoted-printable soft break ending the part", _mime([QP + b"more =\r\n"]), True),
    ("quoted-printable with 8-bit bytes", _mime([QP + b"caf\xe9\x00\r\n"]), True),
    ("quoted-printable trailing blanks", _mime([QP + b"blank  \r\nx\t"]), True),
    (
        "quoted-printable single part",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nab=\r\n",
        True,
    ),
    # base64 is decoded from the part's own bytes by the stdlib's decoder, so bad base64 reads
    # as the stdlib reads it, on the fast path
    ("base64 missing padding", _mime([TEXT, B64_ATTACH.replace(b"ybGQ=", b"ybGQ")]), True),
    ("base64 with junk", _mime([B64_ATTACH.replace(b"aGVs", b"a!G#Vs")]), True),
    ("base64 split by blanks", _mime([B64_ATTACH.replace(b"aGVs", b"aG Vs")]), True),
    # an empty part between two delimiters: sliced by compiled code, its reversed range
    # raised SystemError (hypothesis found both); the stdlib reads no part where the
    # delimiters share a CRLF, so that one is left to it
    ("empty part, delimiters adjacent", _empty_part(b""), False),
    ("empty part, a blank line only", _empty_part(b"\r\n"), True),
    ("folded top header", b"Subject: one\r\n two\r\n\tthree\r\nFrom: a@x\r\n\r\nb", True),
    ("unknown charset", _mime([b"Content-Type: text/plain; charset=x-bogus\r\n\r\n\xfc"]), True),
    (
        "nested alternative in mixed",
        _mime(
            [
                b"Content-Type: multipart/alternative; boundary=in\r\n\r\n--in\r\n"
                + TEXT
                + b"\r\n--in\r\n"
                + HTML
                + b"\r\n--in--",
                B64_ATTACH,
            ]
        ),
        True,
    ),
    (
        "inline image with content-id",
        _mime(
            [
                TEXT,
                b"Content-Type: image/png\r\nContent-ID: "
                b"<img1@x>\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\niVBORw0KGgo=\r\n",
            ]
        ),
        True,
    ),
    ("bad base64", _mime([TEXT, B64_ATTACH.replace(b"aGVsbG8gd29ybGQ=", b"a$$$===x")]), True),
    ("boundary prefix of a line", _mime([TEXT, b"--BBX not a delimiter\r\n" + HTML]), False),
    ("missing close delimiter", _mime([TEXT])[: -len(b"--BB--\r\n")], False),
    (
        "message/rfc822 part",
        _mime([b"Content-Type: message/rfc822\r\n\r\nFrom: c@z\r\n\r\nin"]),
        False,
    ),
    (
        "encoded-word filename",
        _mime(
            [
                b"Content-Type: application/pdf\r\nContent-Disposition: "
                b'attachment; filename="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="'
                b"\r\n\r\nx"
            ]
        ),
        True,  # part headers are the raw strings the stdlib stores, meanings its own calls
    ),
    ("lone LF", b"From: a@x\r\nSubject: s\n\r\nbody\r\n", False),
    # a delimiter after a lone LF or CR is a line start to the stdlib, not to a CRLF search
    ("delimiter after a lone LF", _mime([TEXT + b"\n--BB\r\n" + HTML]), False),
    ("delimiter after a lone CR", _mime([TEXT + b"\r--BB\r\n" + HTML]), False),
    ("lone LF inside a text part", _mime([TEXT + b"\nmore\rtext"]), True),
    ("envelope From_ line", b"From a@x Mon Nov  2 10:00:00 2026\r\nSubject: s\r\n\r\nb", False),
    ("header line without colon", b"From: a@x\r\nnot a header\r\n\r\nbody", False),
    (
        "unknown transfer encoding",
        _mime([b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin"]),
        False,
    ),
    ("two content-types", b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\n<b>", False),
    ("8-bit part header", _mime([b"Content-Type: text/plain; name=\xe9t\xe9.txt\r\n\r\nx"]), False),
    ("multipart without boundary", b"Content-Type: multipart/mixed\r\n\r\nno parts", False),
]


def test_odd_messages_agree_and_step_aside_where_expected() -> None:
    for name, raw, fast_expected in ODD:
        got, want = both(raw)
        assert got == want, name
        assert takes_fast_path(raw) is fast_expected, name


def test_fast_leaves_carry_the_decoded_bytes() -> None:
    raw = _mime([TEXT, QP, B64_ATTACH])
    read = parse_fast(raw, split_header_block(raw))
    assert read is not None
    assert [leaf.content_type for leaf in read.leaves] == [
        "text/plain",
        "text/plain",
        "application/pdf",
    ]
    assert read.leaves[1].payload() == quopri.decodestring(
        b"Gr=FC=DFe, a soft=\r\nbreak and =3D signs\r\n"
    )
    assert read.leaves[2].payload() == b"hello world"
    assert read.leaves[2].filename == "a.pdf"


# --- split_header_lines is the feedparser's own split ---------------------------------------

_names = st.sampled_from(["From", "To", "Subject", "X-Odd", "content-type", "Received", "A"])
_value_chars = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
    ["\t", "\x7f", "\x80", "\xff"]
)
_value = st.text(_value_chars, max_size=40)
_line = st.tuples(
    _names,
    st.sampled_from(["", " ", "  ", "\t"]),
    _value,
    st.lists(st.tuples(st.sampled_from([" ", "\t", "   "]), _value), max_size=3),
)


def _block_of(lines: list[tuple[str, str, str, list[tuple[str, str]]]], blank: bool) -> bytes:
    return "".join(
        name + ":" + pad + value + "".join("\r\n" + ws + cont for ws, cont in folds) + "\r\n"
        for name, pad, value, folds in lines
    ).encode("latin-1") + (b"\r\n" if blank else b"")


#: header blocks as mail has them: fields, blanks after the colon, folded lines
_blocks = st.builds(_block_of, st.lists(_line, min_size=1, max_size=8), st.booleans())


@settings(max_examples=400, deadline=None)
@given(_blocks)
def test_header_split_matches_the_feedparser(block: bytes) -> None:
    ours = split_header_lines(block)
    theirs = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    assert ours is not None
    assert ours == theirs._headers  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_header_split_answers_the_feedparser_or_steps_aside(block: bytes) -> None:
    block = crlf(block.replace(b"\r", b""))
    ours = split_header_lines(block)
    if ours is None:
        return
    theirs = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    assert ours == theirs._headers  # type: ignore[attr-defined]


def test_the_compiled_header_split_is_the_one_in_use() -> None:
    from inboxstream.mail import _headers_native

    assert split_header_lines is _headers_native.split_header_lines


_block_pieces = st.lists(
    st.sampled_from(
        [b"From", b"X-a", b":", b" ", b"\t", b"\r\n", b"\r", b"\n", b"v", b"\x80", b"\xff", b"\x00"]
    )
    | st.binary(max_size=6),
    max_size=40,
)


@settings(max_examples=1500, deadline=None)
@given(_block_pieces, st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\nbody"]))
def test_the_compiled_header_split_answers_as_the_regex(pieces: list[bytes], tail: bytes) -> None:
    block = b"".join(pieces) + tail
    assert split_header_lines(block) == _split_header_lines_py(block)


@settings(max_examples=400, deadline=None)
@given(_blocks)
def test_the_compiled_header_split_answers_as_the_regex_on_real_blocks(block: bytes) -> None:
    ours = split_header_lines(block)
    assert ours is not None and ours == _split_header_lines_py(block)
    assert split_header_lines(block[:-1]) == _split_header_lines_py(block[:-1])


# --- generated MIME trees -------------------------------------------------------------------

_text = st.lists(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["=", "\r\n", " "]),
    max_size=120,
).map("".join)
_charset = st.sampled_from(["utf-8", "iso-8859-1", "us-ascii", "x-unknown", "UTF-8"])
_cte = st.sampled_from(["", "7bit", "8bit", "base64", "quoted-printable", "Base64"])


@st.composite
def _leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream"]))
    charset = draw(_charset)
    cte = draw(_cte)
    data = draw(_text).encode(charset if charset.lower() != "x-unknown" else "utf-8", "replace")
    if cte == "quoted-printable" and draw(st.booleans()):
        # not from an encoder: blanks before line ends, soft breaks anywhere, stray "="
        pieces = st.sampled_from(["a", "=", " ", "\t", "\r\n", "=3D", "=\r\n", "\xe9"])
        body = "".join(draw(st.lists(pieces, max_size=30))).encode("latin-1")
    elif cte.lower() == "base64":
        body = base64.encodebytes(data)
    elif cte == "quoted-printable":
        body = quopri.encodestring(data)
    else:
        body = data
    headers = f"Content-Type: {ctype}; charset={charset}\r\n"
    if cte:
        headers += f"Content-Transfer-Encoding: {cte}\r\n"
    if draw(st.booleans()):
        name = draw(st.sampled_from(["a.pdf", '"quoted name.txt"', "x.bin", '"r\u00e9.txt"']))
        kind = draw(st.sampled_from(["attachment", "inline", "ATTACHMENT"]))
        headers += f"Content-Disposition: {kind}; filename={name}\r\n"
    return headers.encode("utf-8") + b"\r\n" + crlf(body)


def _tree(depth: int) -> st.SearchStrategy[bytes]:
    if depth == 0:
        return _leaf()
    return st.one_of(_leaf(), _multipart(depth))


@st.composite
def _multipart(draw: st.DrawFn, depth: int) -> bytes:
    subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
    boundary = draw(st.sampled_from(["b", "b1", "=_b", "bound ary", "b" * 60])) + str(depth)
    children = draw(st.lists(_tree(depth - 1), min_size=0, max_size=3))
    close = draw(st.sampled_from(["--", "--", "--", ""]))
    parts = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
        + draw(st.sampled_from([b"", b"preamble\r\n"]))
        + parts
        + b"--"
        + boundary.encode()
        + close.encode()
        + b"\r\n"
    )


@settings(max_examples=400, deadline=None)
@given(_tree(3))
def test_generated_mime_trees_agree(tree: bytes) -> None:
    raw = b"From: a@x.test\r\nMessage-ID: <g@x>\r\nMIME-Version: 1.0\r\n" + tree
    got, want = both(raw)
    assert got == want


_bchar = st.sampled_from(list("0123456789AZaz'()+_,./:=?-") + ["\\", '"', " ", ";", "\xe9"])
_ctype_head = st.sampled_from(
    [
        "multipart/mixed",
        "multipart/alternative",
        "Multipart/Related",
        "multipart",
        "text/plain",
        "message/rfc822",
        "multipart/digest",
        "",
        "multipart/mixed; charset=x",
    ]
)


@settings(max_examples=600, deadline=None)
@given(
    _ctype_head,
    st.sampled_from([";", "; ", ";\r\n ", ";\r\n\t", " ; "]),
    st.sampled_from(["boundary=", "Boundary=", "boundary = "]),
    st.sampled_from(['"', ""]),
    st.text(_bchar, min_size=0, max_size=12),
    st.sampled_from([(), ("7bit",), ("base64",)]),
    st.sampled_from([(), ("attachment; filename=a.pdf",)]),
)
def test_boundary_placeholder_cache_gives_the_stdlib_meaning(
    head: str,
    sep: str,
    param: str,
    quote: str,
    boundary: str,
    cte: tuple[str, ...],
    disposition: tuple[str, ...],
) -> None:
    """The meaning cache keyed by the shape of the Content-Type (the boundary replaced by a
    placeholder) answers exactly what the stdlib reads from the real string, for every
    boundary, quoted or not, including characters the shape must refuse."""
    value = f"{head}{sep}{param}{quote}{boundary}{quote}"
    key = ((value,), cte, disposition, ())
    uncached = mime._meaning.__wrapped__  # type: ignore[attr-defined]
    assert mime._meaning_by_shape(key) == uncached(key)


@st.composite
def _mangled(draw: st.DrawFn) -> bytes:
    """A generated MIME message with bytes spliced in where they hurt a line-based reader: lone
    CR or LF (the stdlib ends lines at either), delimiter-like lines, blank lines in headers."""
    raw = b"From: a@x.test\r\nMessage-ID: <g@x>\r\nMIME-Version: 1.0\r\n" + draw(_tree(3))
    pieces = st.sampled_from(
        [b"\r", b"\n", b"\n\n", b"\r\n\r\n", b"\r\n--b2\r\n", b"\n--b1--\n", b"--b3", b"\r--b1\r\n"]
    )
    # mostly past the top header block, where the fast path still answers
    body_at = draw(st.sampled_from([0, raw.find(b"\r\n\r\n") + 4]))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(body_at, len(raw)))
        raw = raw[:at] + draw(pieces) + raw[at:]
    return raw


@settings(max_examples=600, deadline=None)
@given(_mangled())
def test_mangled_mime_agrees_or_steps_aside(raw: bytes) -> None:
    """Wherever the fast path answers for a damaged message, it answers as the stdlib."""
    got, want = both(raw)
    assert got == want


@st.composite
def _nested_same_boundary(draw: st.DrawFn) -> bytes:
    inner_b = draw(st.sampled_from(["b", "c", "b-"]))
    quote = draw(st.sampled_from(['"', ""]))
    inner = (
        f"Content-Type: multipart/alternative; boundary={quote}{inner_b}{quote}\r\n\r\n"
        f"--{inner_b}\r\n".encode()
        + TEXT
        + f"\r\n--{inner_b}\r\n".encode()
        + HTML
        + f"\r\n--{inner_b}--".encode()
    )
    parts = draw(
        st.lists(st.sampled_from([TEXT, inner, B64_ATTACH, b"\r\nno headers"]), max_size=3)
    )
    return _mime(parts, boundary=b"b")


@settings(max_examples=200, deadline=None)
@given(_nested_same_boundary())
def test_nested_boundaries_agree_or_step_aside(raw: bytes) -> None:
    """A part that reuses (or prefixes) the boundary around it: the stdlib's reading wins."""
    got, want = both(raw)
    assert got == want


_b64_text = st.lists(
    st.sampled_from(list("QUJDRGFiY2Q0NTY3+/") + ["=", "==", " ", "\t", "!", "-", "_", "\x00"]),
    max_size=40,
).map(lambda chars: "".join(chars).encode())


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_b64_text, st.binary(max_size=40).map(base64.b64encode), st.binary(max_size=30)))
def test_base64_reads_as_the_stdlib_reads_it(joined: bytes) -> None:
    """The SIMD decode answers exactly what the stdlib's ``decode_b`` answers: valid base64,
    missing or misplaced padding, characters outside the alphabet, non-canonical bits."""
    assert mime._base64(joined) == decode_b(joined)[0]

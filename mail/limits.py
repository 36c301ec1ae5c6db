"""How much of one message we read: the bounds that keep a hostile sender from buying unbounded
CPU, memory or event size with one crafted message.

Every bound keeps the message whole as an event (it is threaded and projected like any other);
only the excess is left out, and what was left out is said on the event (``parse_error``, and
``references_dropped`` for References). The numbers are far above what real mail carries, so
well-formed mail never meets them. The README's rules section lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Message-IDs kept from one References header. Longer lists keep their first id (the thread's
#: root) and the ids closest to the message, as RFC 5322 section 3.6.4 asks of mailers that trim
#: and as RFC 5256 threading implementations (Dovecot, Thunderbird) read them.
MAX_REFERENCES = 100

#: Characters of a Subject (or any free-text header) that are decoded; RFC 2047 decoding in the
#: stdlib is super-linear in the number of encoded words.
MAX_TEXT_HEADER_CHARS = 16 * 1024

#: Characters of one address header (To, Cc, ...) that are parsed: a couple of thousand
#: addresses.
MAX_ADDRESS_HEADER_CHARS = 96 * 1024

#: Bytes of the raw header block kept on the event (the rest is counted in ``parse_error``).
MAX_RAW_HEADER_BYTES = 128 * 1024

#: MIME tree bounds: parts nested deeper, or beyond the part count, are not read.
MAX_MIME_DEPTH = 50
MAX_MIME_PARTS = 1000

#: UTF-8 bytes kept of the text and of the html body each. With the header bounds above, every
#: event stays under Kafka's default 1 MiB request size (a message event at most ~0.8 MiB:
#: raw headers, four address headers, 200 ids of 998 characters, a Subject).
MAX_BODY_BYTES = 384 * 1024

#: Attachment entries listed on one body event.
MAX_ATTACHMENTS = 1000


def cap_references(ids: Sequence[str], limit: int = MAX_REFERENCES) -> tuple[list[str], int]:
    """At most ``limit`` ids: the first and the last ``limit - 1``; and how many were dropped."""
    if len(ids) <= limit:
        return list(ids), 0
    if limit <= 1:
        return list(ids[-limit:]) if limit == 1 else [], len(ids) - max(limit, 0)
    return [ids[0], *ids[len(ids) - (limit - 1) :]], len(ids) - limit


def clip_text(value: str, limit: int = MAX_TEXT_HEADER_CHARS) -> tuple[str, bool]:
    """The first ``limit`` characters, and whether anything was cut."""
    return (value, False) if len(value) <= limit else (value[:limit], True)


def clip_address_list(value: str, limit: int = MAX_ADDRESS_HEADER_CHARS) -> tuple[str, bool]:
    """An address list cut at the last comma within ``limit``, so no address is cut in two."""
    if len(value) <= limit:
        return value, False
    head = value[:limit]
    comma = head.rfind(",")
    return (head[:comma] if comma > 0 else head), True


def clip_utf8(text: str, limit: int = MAX_BODY_BYTES) -> str:
    """``text`` within ``limit`` UTF-8 bytes, never half a character; ``text`` itself when it
    fits (checked by length first: a character is at most 4 bytes, so most text is never
    encoded here)."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def flatten_comments(value: str, max_depth: int = 8) -> str:
    """RFC 5322 comments nested deeper than ``max_depth`` removed, in one pass, no recursion.

    The stdlib address parser recurses once per nesting level of ``(...)``; comments carry no
    address, so dropping the deep ones loses nothing a reader needs. Quoted strings are kept.
    """
    if value.count("(") <= max_depth:
        return value
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth <= max_depth:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth <= max_depth:
                out.append(ch)
            continue
        if quoted:
            quoted = ch != '"'
            out.append(ch)
            continue
        if ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
            continue
        if ch == "(":
            depth += 1
            if depth <= max_depth:
                out.append(ch)
            continue
        if ch == ")" and depth > 0:
            if depth <= max_depth:
                out.append(ch)
            depth -= 1
            continue
        if depth <= max_depth:
            out.append(ch)
    # Unclosed comments are closed, so the parser sees a balanced value.
    out.append(")" * min(depth, max_depth))
    return "".join(out)

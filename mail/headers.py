"""RFC 5322 header fields as mail in the wild writes them: Message-ID lists, dates and
RFC 2047 encoded words. Pure functions that never raise on bad input.

Shared by the producers (every event's headers), the processors (the offline ``thread``
command and base subjects) and anything else that reads a header: one lenient reading of each
field, so the same bytes give the same ids and subjects wherever they are read.
"""

from __future__ import annotations

import email.errors
import functools
import re
from datetime import UTC, datetime
from email.header import decode_header
from email.utils import parsedate_to_datetime

_MSGID_RE = re.compile(rb"<([^<>\s]+)>")
#: RFC 5322 caps a line at 998 characters, so no real msg-id is longer; a longer one is noise
#: (and would let one header fill an event).
MAX_MSGID_CHARS = 998


def parse_msg_ids(value: str | bytes | None) -> list[str]:
    """Message-IDs from a Message-ID / In-Reply-To / References value, leniently.

    Angle-bracketed ids are taken in order, duplicates dropped. A value with no brackets at all
    (seen from broken mailers) falls back to its whitespace-separated tokens that contain '@'.
    """
    if not value:
        return []
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    found = [m.decode("utf-8", "replace") for m in _MSGID_RE.findall(data)]
    if not found:
        found = [t.decode("utf-8", "replace").strip("<>,;\"'") for t in data.split() if b"@" in t]
    seen: set[str] = set()
    out = []
    for mid in found:
        if mid and len(mid) <= MAX_MSGID_CHARS and mid not in seen:
            seen.add(mid)
            out.append(mid)
    return out


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; an unknown or lying charset falls back to UTF-8,
    then Latin-1 (which never fails), so text is never lost, only possibly mis-decoded."""
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def decode_text(value: str | None) -> str | None:
    """Decode RFC 2047 encoded words, chunk by chunk, never raising."""
    if value is None:
        return None
    return _decode_words(value)


@functools.lru_cache(maxsize=4096)
def _decode_words(value: str) -> str:
    """Cached: subjects and display names repeat across a mailbox (every reply in a thread),
    and the stdlib's decode_header is a tenth of a message's parse time."""
    try:
        chunks = decode_header(value)
    except (ValueError, email.errors.HeaderParseError):
        return value
    out = []
    for chunk, charset in chunks:
        out.append(decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk)
    # decode_header drops the whitespace between an encoded word and plain text only when
    # both sides are encoded; joining plain chunks keeps their own spacing.
    return "".join(out).strip() if len(out) > 1 else (out[0] if out else "")


def parse_date(value: object) -> datetime | None:
    """An RFC 5322 Date header as an aware datetime, or None when it is garbage; never raises
    (a huge zone offset or year makes the stdlib raise OverflowError)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Dates before 1970 or absurdly far ahead are garbage from broken mailers.
    if not 1970 <= parsed.year <= 9999:
        return None
    return parsed

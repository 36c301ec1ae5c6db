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

from inboxstream.core.dates import MONTHS, fixed_zone

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
    (a huge zone offset or year makes the stdlib raise OverflowError).

    The stdlib's ``parsedate_to_datetime`` takes ~10 µs (it tokenises every form mail has
    used since RFC 822); the form nearly every mailer writes (``Mon, 2 Nov 2026 10:00:00
    +0100``) is read by one regex, and anything else, or any field out of range, goes to the
    stdlib, whose answer is the reference (tests/unit/mail/test_headers.py compares both).
    """
    if not value:
        return None
    text = str(value)
    found = _DATE_RE.fullmatch(text)
    if found is not None:
        fast = _parse_plain_date(found)
        if fast is not None:
            return fast
    return parse_date_stdlib(text)


def parse_date_stdlib(text: str) -> datetime | None:
    """``parse_date`` through the stdlib alone (the fallback, and the tests' reference)."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Dates before 1970 or absurdly far ahead are garbage from broken mailers.
    if not 1970 <= parsed.year <= 9999:
        return None
    return parsed


_DATE_RE = re.compile(
    r"(?:[A-Za-z]{3}, )?([0-9]{1,2}) ([A-Za-z]{3}) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-5][0-9])"
)


def _parse_plain_date(found: re.Match[str]) -> datetime | None:
    """The fixed form's fields, or None to let the stdlib decide (out-of-range fields)."""
    day, month, year, hh, mm, ss, sign, zh, zm = found.groups()
    number = MONTHS.get(month.lower())
    hour, minute, second, y = int(hh), int(mm), int(ss), int(year)
    if number is None or hour > 23 or minute > 59 or second > 59 or not 1970 <= y <= 9999:
        return None
    offset = int(zh) * 3600 + int(zm) * 60
    if offset >= 86400:
        return None
    # "-0000" means "zone unknown" (RFC 5322 3.3); the stdlib reads it as naive, we as UTC.
    zone = fixed_zone(-offset if sign == "-" else offset)
    try:
        return datetime(y, number, int(day), hour, minute, second, tzinfo=zone)
    except ValueError:
        return None

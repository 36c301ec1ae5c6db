"""Turn aioimaplib's FETCH response lines into typed records. Pure logic.

aioimaplib returns a flat list: for each message a line ending in a ``{N}`` literal marker, the
literal itself (bytes/bytearray), then a line holding the rest of the attributes (usually just
``)``); the tagged completion line comes last. Attributes may come before or after the literal,
so both text parts are scanned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from inboxstream.core.dates import MONTHS, fixed_zone
from inboxstream.imap.folders import decode_mutf7

#: Messages per UID FETCH during backfill. Measured on the 2-core dev box against Dovecot
#: (bench/imap_fetch_batch.py, 6,000 messages of 5 KB on average, full-body FETCH):
#: stock aioimaplib 5,500 msg/s at 50 per FETCH, 3,000 at 500, 1,500 at 2,000 (its reader is
#: quadratic; flags-only FETCHes of ~2,000 hit RecursionError); our reader
#: (imap/response.py) is flat, 7,000-12,000 msg/s from 50 to 4,000. End to end (20,000 messages into
#: Kafka, 2 parse workers, the compiled MIME fast path) the batch hardly matters: 6,100-6,500
#: msg/s at 250, 6,100-6,400 at 500, 6,500-6,600 at 1,000 (the box's noise is as large), because
#: the two cores are busy parsing, encoding and serving. 500 keeps one batch to ~2.5 MB of
#: typical mail (the fetch/parse/publish pipeline of producers/folder_sync.py holds at most
#: four, ~10 MB) and the Kafka ack wait to one round trip per 1,000 events.
BACKFILL_BATCH = 500
_LITERAL_RE = re.compile(rb"\{(\d+)\}$")
_SEQ_RE = re.compile(rb"^(\d+) FETCH \(")
_UID_RE = re.compile(rb"\bUID (\d+)")
_SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_MODSEQ_RE = re.compile(rb"\bMODSEQ \((\d+)\)")
_FLAGS_RE = re.compile(rb"\bFLAGS \(([^)]*)\)")
_INTERNALDATE_RE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_GM_MSGID_RE = re.compile(rb"\bX-GM-MSGID (\d{1,20})")
_GM_LABELS_RE = re.compile(rb"\bX-GM-LABELS \(((?:[^()\"]|\"(?:[^\"\\]|\\.)*\")*)\)")
_LABEL_TOKEN_RE = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s"()]+)')


def parse_gm_labels(inner: bytes) -> tuple[str, ...]:
    """The labels of an ``X-GM-LABELS (...)`` list: atoms (``\\Inbox``, ``Work``) and quoted
    strings (``"Two words"``), in modified UTF-7 like mailbox names (RFC 3501 5.1.3)."""
    labels = []
    for quoted, atom in _LABEL_TOKEN_RE.findall(inner):
        raw = re.sub(rb"\\(.)", rb"\1", quoted) if quoted or not atom else atom
        text = raw.decode("utf-8", "replace")
        labels.append(text if text.startswith("\\") else decode_mutf7(text))
    return tuple(labels)


@dataclass(frozen=True)
class FetchedItem:
    seq: int
    uid: int
    raw: bytes | None
    size: int | None
    flags: tuple[str, ...]
    internal_date: datetime | None
    modseq: int | None
    #: Gmail's X-GM-EXT-1: the message's id across all its labels, and the labels (decoded).
    gm_msgid: str | None = None
    gm_labels: tuple[str, ...] = ()


def parse_internaldate(value: bytes) -> datetime | None:
    """``22-Nov-2026 10:00:00 +0100`` → aware datetime; None when the server sent junk.

    ``strptime`` costs ~15 µs (a fifth of the backfill's main-process time per message in a
    profile), so RFC 3501's fixed form is read by one regex and a cached zone; anything else
    (and any out-of-range field) goes to ``strptime``, whose answer is the reference.
    """
    found = _DATE_TIME_RE.fullmatch(value)
    if found is not None:
        day, month, year, hh, mm, ss, sign, zh, zm = found.groups()
        hour, minute, second = int(hh), int(mm), int(ss)
        number = MONTHS.get(month.lower().decode("ascii"))
        offset = (int(zh) * 3600 + int(zm) * 60) * (-1 if sign == b"-" else 1)
        if number is not None and hour < 24 and minute < 60 and second < 60:
            try:
                return datetime(
                    int(year),
                    number,
                    int(day),
                    hour,
                    minute,
                    second,
                    tzinfo=fixed_zone(offset),
                )
            except ValueError:
                pass  # 31-Feb, year 0, a zone of 24 h or more: strptime decides
    try:
        return datetime.strptime(value.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


_DATE_TIME_RE = re.compile(
    rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
    rb"([+-])([0-9]{2})([0-5][0-9])"
)


def _flags(inner: bytes) -> tuple[str, ...]:
    """The flags of a ``FLAGS (...)`` list."""
    return tuple(f.decode("utf-8", "replace") for f in inner.split())


def _meta(text: bytes, seq: int, raw: bytes | None) -> FetchedItem | None:
    uid = _UID_RE.search(text)
    if uid is None:
        return None
    size = _SIZE_RE.search(text)
    modseq = _MODSEQ_RE.search(text)
    flags = _FLAGS_RE.search(text)
    idate = _INTERNALDATE_RE.search(text)
    # Gmail's attributes only where the server sent one (two regex passes saved per message)
    gmail = b"X-GM-" in text
    gm_msgid = _GM_MSGID_RE.search(text) if gmail else None
    gm_labels = _GM_LABELS_RE.search(text) if gmail else None
    return FetchedItem(
        seq=seq,
        uid=int(uid.group(1)),
        raw=raw,
        size=int(size.group(1)) if size else None,
        flags=_flags(flags.group(1)) if flags else (),
        internal_date=parse_internaldate(idate.group(1)) if idate else None,
        modseq=int(modseq.group(1)) if modseq else None,
        gm_msgid=gm_msgid.group(1).decode() if gm_msgid else None,
        gm_labels=parse_gm_labels(gm_labels.group(1)) if gm_labels else (),
    )


#: The answer to the backfill's own FETCH items, in the order servers send them back (Dovecot,
#: and most others, answer in the order asked): one match instead of seven searches. Anything
#: else (other attributes, another order, a quoted flag) is read by ``_meta``.
_BACKFILL_LINE_RE = re.compile(
    rb'\d+ FETCH \(UID (\d+) FLAGS \(([^()"]*)\) INTERNALDATE "([^"]+)" RFC822\.SIZE (\d+)'
    rb"(?: MODSEQ \((\d+)\))? BODY\[\] \{\d+\}"
)


def _backfill_item(found: re.Match[bytes], seq: int, raw: bytes) -> FetchedItem:
    uid, flags, idate, size, modseq = found.groups()
    return FetchedItem(
        seq=seq,
        uid=int(uid),
        raw=raw,
        size=int(size),
        flags=_flags(flags),
        internal_date=parse_internaldate(idate),
        modseq=None if modseq is None else int(modseq),
    )


def parse_fetch_lines(lines: list[bytes | bytearray]) -> list[FetchedItem]:
    """All messages in one FETCH response, in server order; unrelated lines are skipped."""
    out: list[FetchedItem] = []
    i = 0
    n = len(lines)
    while i < n:
        line = bytes(lines[i])
        head = _SEQ_RE.match(line)
        if head is None:
            i += 1
            continue
        seq = int(head.group(1))
        item: FetchedItem | None
        if _LITERAL_RE.search(line) and i + 1 < n:
            raw = bytes(lines[i + 1])
            tail = bytes(lines[i + 2]) if i + 2 < n else b""
            plain = _BACKFILL_LINE_RE.fullmatch(line) if tail == b")" else None
            if plain is not None:
                item = _backfill_item(plain, seq, raw)
            else:
                item = _meta(line + b" " + tail, seq, raw)
            i += 3
        else:
            item = _meta(line, seq, None)
            i += 1
        if item is not None:
            out.append(item)
    return out


_SEARCH_RE = re.compile(rb"\d+(?: +\d+)*")


def search_uids(lines: Sequence[bytes | bytearray]) -> list[int]:
    """UIDs from SEARCH responses; aioimaplib strips ``* SEARCH`` (other clients may not)."""
    uids: list[int] = []
    for line in lines:
        raw = bytes(line).strip()
        if raw.upper().startswith(b"SEARCH"):
            raw = raw[6:].strip()
        if _SEARCH_RE.fullmatch(raw):
            uids += [int(x) for x in raw.split()]
    return uids

"""Offline threading of an mbox file: the debugging and comparison side of ``inboxstream thread``.

Every message in the file comes out exactly once, however broken: header parsing is lenient
(stdlib compat32 parser, our tolerant Message-ID parser) and a failure in one field only
empties that field.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import email.utils
import hashlib
import mailbox
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

from inboxstream.mail.headers import decode_text, parse_date, parse_msg_ids
from inboxstream.mail.limits import MAX_REFERENCES, cap_references, clip_text
from inboxstream.processors.jwz import Algorithm, ThreadInput, thread_messages


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # a header the parser cannot even hold: treat as absent
        return None
    return None if value is None else str(value)


def thread_input_from_bytes(key: int, raw: bytes) -> ThreadInput[int]:
    """What threading needs from one raw message; never raises."""
    try:
        # Threading reads headers only: the header parser never descends into MIME parts,
        # whose nesting the sender controls.
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    except Exception:
        return ThreadInput(key=key, message_id=None)
    ids = parse_msg_ids(_header(msg, "Message-ID"))
    return ThreadInput(
        key=key,
        message_id=ids[0] if ids else None,
        references=tuple(cap_references(parse_msg_ids(_header(msg, "References")))[0]),
        in_reply_to=tuple(parse_msg_ids(_header(msg, "In-Reply-To"))[:MAX_REFERENCES]),
        subject=decode_text(clip_text(_header(msg, "Subject") or "")[0] or None),
        date=parse_date(_header(msg, "Date")),
    )


def read_mbox(path: Path) -> list[ThreadInput[int]]:
    """The messages of an mbox file, keyed by their 0-based position."""
    box = mailbox.mbox(str(path), create=False)
    try:
        return [thread_input_from_bytes(i, box.get_bytes(k)) for i, k in enumerate(box.keys())]
    finally:
        box.close()


def offline_thread_id(first: ThreadInput[int]) -> str:
    """A stable id for an offline thread: from its first message's position and id (the
    position keeps two threads apart whose first messages share a duplicated id)."""
    seed = f"{first.key}\x00{first.message_id or ''}"
    return hashlib.sha256(seed.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def thread_mbox(path: Path, algorithm: Algorithm = "rfc5256") -> Iterator[dict[str, Any]]:
    """One JSON-ready object per thread, in the order of each thread's first message."""
    inputs = read_mbox(path)
    for thread in thread_messages(inputs, algorithm):
        members = [inputs[k] for k in thread.keys]
        yield {
            "thread_id": offline_thread_id(members[0]),
            "messages": [{"index": m.key, "message_id": m.message_id} for m in members],
        }

"""A big, realistic mailbox for the backfill benchmarks, filled in seconds.

``inboxstream.app.mailgen`` composes each message with the email package (about a millisecond each),
so we compose a pool of distinct messages once and repeat it with a unique Message-ID per copy:
sizes, MIME structure and header mix stay those of the generator.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterator

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.infra import dovecot

POOL = 2_000


def mails(n: int, owner: str, *, pool: int = POOL) -> Iterator[bytes]:
    """n messages; copy k of pool message m is its own conversation: every id in it (its
    Message-ID, In-Reply-To and References) gets the prefix ``r{k}.`` and its subject the tag
    `` [r{k}]``, so a copy threads with its own copies of the replies, never with another
    copy (a mailbox of 100,000 messages is ~28,000 conversations, not 570 huge ones)."""
    base = [m.raw for m in itertools.islice(generate_mailbox(owner, threads=pool), pool)]
    for i in range(n):
        raw = base[i % len(base)]
        head, sep, body = raw.partition(b"\n\n")
        yield _as_copy(head, f"r{i // len(base)}".encode()) + sep + body


def _as_copy(head: bytes, copy: bytes) -> bytes:
    ids = _ID_FIELD_RE.sub(lambda f: _ID_RE.sub(b"<" + copy + rb".\1>", f[0]), head)
    return _SUBJECT_RE.sub(rb"\g<0> [" + copy + b"]", ids, count=1)


#: The fields that carry message ids, continuation lines included.
_ID_FIELD_RE = re.compile(rb"(?mi)^(?:Message-ID|In-Reply-To|References):[^\n]*(?:\n[ \t][^\n]*)*")
#: An id in angle brackets (the generator writes ids without brackets inside them).
_ID_RE = re.compile(rb"<([^<>@\s]+@[^<>\s]+)>")
#: The Subject field's value up to its line end (the generator never folds it).
_SUBJECT_RE = re.compile(rb"(?m)^Subject: [^\r\n]*")


def filled_user(n: int, prefix: str = "bench") -> tuple[str, str, int]:
    """A new Dovecot user whose INBOX holds n messages: (name, password, folder bytes)."""
    name = f"{prefix}{secrets.token_hex(4)}@inboxstream.test"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(name, password)
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for raw in mails(n, name):
            size += len(raw)
            yield raw

    count = dovecot.fill_maildir(name, counted())
    if count != n:
        raise RuntimeError(f"expected {n} messages in {name}'s INBOX, Dovecot has {count}")
    return name, password, size

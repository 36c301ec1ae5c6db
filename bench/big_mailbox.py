"""A big, realistic mailbox for the backfill benchmarks, filled in seconds.

``inboxstream.app.mailgen`` composes each message with the email package (about a millisecond each),
so we compose a pool of distinct messages once and repeat it with a unique Message-ID per copy:
sizes, MIME structure and header mix stay those of the generator.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

from inboxstream.app.mailgen import generate_mailbox
from inboxstream.infra import dovecot

POOL = 2_000


def mails(n: int, owner: str, *, pool: int = POOL) -> Iterator[bytes]:
    """n messages; copy k of pool message m gets Message-ID ``<r{k}.{original}>``."""
    base = [m.raw for m in itertools.islice(generate_mailbox(owner, threads=pool), pool)]
    for i in range(n):
        raw = base[i % len(base)]
        yield raw.replace(b"Message-ID: <", f"Message-ID: <r{i // len(base)}.".encode(), 1)


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

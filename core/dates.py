"""What the fast date readers share (IMAP INTERNALDATE in imap/fetch.py, the RFC 5322 Date
header in mail/headers.py): month numbers by English abbreviation and fixed-offset zones."""

from __future__ import annotations

import functools
from datetime import UTC, timedelta, timezone

#: ``jan`` → 1 ... ``dec`` → 12 (lower case: both formats are case-insensitive).
MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}


@functools.lru_cache(maxsize=256)
def fixed_zone(seconds: int) -> timezone:
    """The zone ``seconds`` east of UTC, shared per offset; UTC itself for 0 (what strptime
    and the stdlib's date parser give for +0000). Raises ValueError at 24 h or more."""
    return UTC if seconds == 0 else timezone(timedelta(seconds=seconds))

"""Root of every error inboxstream raises on purpose.

Retry loops look at ``retriable``, never at class names: a transient fault (a broker that is
restarting, a dropped connection) is retriable; bad input or bad credentials are not.
"""

from __future__ import annotations


class InboxstreamError(Exception):
    """Base error. Subclasses set ``retriable``; messages never contain secrets."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable

"""How many IMAP connections one process sets up at once, and in which order.

A producer that starts with a thousand inboxes would otherwise open every connection at the
same moment: TCP, TLS and LOGIN for thousands of sessions hit the server together, answers
come after the client's timeout, every connection counts as failed and backs off, and the
storm repeats (measured on Dovecot with 1,000 inboxes: nothing was synced in ten minutes).

``ConnectGate`` lets at most ``limit`` set-ups run at a time (connect to the end of LOGIN and
the session options); a connection that is up gives its place back, so the gate bounds the
server's login work, never how many connections are held. Waiters are served by role: every
INBOX connection waiting goes before any sent-folder one, which goes before the other-folders
one, so new mail of every inbox flows before the less urgent folders of any. Within a role,
first come, first served.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from inboxstream.imap.budget import ConnectionRole

#: Lower goes first.
PRIORITY: dict[ConnectionRole, int] = {"inbox": 0, "sent": 1, "other": 2, "send": 3}


@dataclass
class ConnectGate:
    """At most ``limit`` connection set-ups at once, served by role (module docstring).

    ``in_flight`` and ``peak`` are read by tests and benchmarks; ``granted`` keeps the order
    in which roles got through when ``record`` is set."""

    limit: int
    in_flight: int = field(default=0, init=False)
    peak: int = field(default=0, init=False)
    record: bool = False
    granted: list[ConnectionRole] = field(default_factory=list, init=False)
    _waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list, init=False)
    _order: itertools.count[int] = field(default_factory=itertools.count, init=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a connect gate needs a limit of at least 1, not {self.limit}")

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    @asynccontextmanager
    async def slot(self, role: ConnectionRole) -> AsyncIterator[None]:
        """Hold a set-up place while the block runs."""
        await self._acquire(role)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, role: ConnectionRole) -> None:
        if self.in_flight < self.limit and not self.waiting:
            self._take(role)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (PRIORITY[role], next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # granted and cancelled in the same turn: hand the place on, never leak it
                self._release()
            raise
        if self.record:
            self.granted.append(role)

    def _take(self, role: ConnectionRole) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.record:
            self.granted.append(role)

    def _release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit:
            _, _, fut = heapq.heappop(self._waiters)
            if fut.done():  # its waiter was cancelled
                continue
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            fut.set_result(None)

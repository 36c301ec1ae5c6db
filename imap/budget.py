"""The per-inbox connection budget from the source documents.

At most five concurrent connections per inbox: one permanent for INBOX, one permanent for the
sent folder, one permanent for all other folders (rotating through them), and two temporary
ones while sending. Every IMAP or SMTP connection an inbox opens is taken through
``InboxBudget.hold(role)``, so the limit is enforced in code rather than hoped for; waiting
for a slot is the back-pressure.

The budget is per process: one process owns an inbox at a time (the producers' checkpoint
ownership), and the sender in that process shares the same ``BudgetRegistry``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from inboxstream.core.metrics import INBOX_CONNECTIONS

ConnectionRole = Literal["inbox", "sent", "other", "send"]

SLOTS: dict[ConnectionRole, int] = {"inbox": 1, "sent": 1, "other": 1, "send": 2}
MAX_CONNECTIONS = sum(SLOTS.values())  # 5


@dataclass
class InboxBudget:
    """Slots of one inbox. ``peak`` is the most connections ever held at once (for tests)."""

    inbox_id: str
    _slots: dict[ConnectionRole, asyncio.Semaphore] = field(init=False)
    in_use: dict[ConnectionRole, int] = field(init=False)
    peak: int = 0

    def __post_init__(self) -> None:
        self._slots = {role: asyncio.Semaphore(n) for role, n in SLOTS.items()}
        self.in_use = {role: 0 for role in SLOTS}

    @property
    def total(self) -> int:
        return sum(self.in_use.values())

    @asynccontextmanager
    async def hold(self, role: ConnectionRole) -> AsyncIterator[None]:
        """Wait for a slot of this role, keep it while the block runs, then give it back."""
        slot = self._slots[role]
        await slot.acquire()
        self.in_use[role] += 1
        self.peak = max(self.peak, self.total)
        INBOX_CONNECTIONS.labels(self.inbox_id).inc()
        try:
            yield
        finally:
            self.in_use[role] -= 1
            INBOX_CONNECTIONS.labels(self.inbox_id).dec()
            slot.release()


@dataclass
class BudgetRegistry:
    """One budget per inbox id, shared by everything in the process that connects for it."""

    _budgets: dict[str, InboxBudget] = field(default_factory=dict)

    def for_inbox(self, inbox_id: str) -> InboxBudget:
        budget = self._budgets.get(inbox_id)
        if budget is None:
            budget = self._budgets[inbox_id] = InboxBudget(inbox_id)
        return budget

    def forget(self, inbox_id: str) -> None:
        self._budgets.pop(inbox_id, None)

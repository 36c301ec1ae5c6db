from __future__ import annotations

import asyncio

from inboxstream.imap.budget import MAX_CONNECTIONS, BudgetRegistry, ConnectionRole


async def test_never_more_than_five_and_never_two_per_permanent_role() -> None:
    budget = BudgetRegistry().for_inbox("i")
    held: dict[ConnectionRole, int] = {"inbox": 0, "sent": 0, "other": 0, "send": 0}
    worst: dict[ConnectionRole, int] = dict(held)

    async def worker(role: ConnectionRole) -> None:
        async with budget.hold(role):
            held[role] += 1
            worst[role] = max(worst[role], held[role])
            await asyncio.sleep(0.001)
            held[role] -= 1

    roles: list[ConnectionRole] = ["inbox", "sent", "other", "send"]
    await asyncio.gather(*(worker(roles[i % 4]) for i in range(200)))
    assert budget.peak == MAX_CONNECTIONS == 5
    assert worst == {"inbox": 1, "sent": 1, "other": 1, "send": 2}
    assert budget.total == 0


async def test_a_third_send_waits_for_a_slot() -> None:
    budget = BudgetRegistry().for_inbox("i")
    release = asyncio.Event()
    started: list[int] = []

    async def send(n: int) -> None:
        async with budget.hold("send"):
            started.append(n)
            await release.wait()

    tasks = [asyncio.create_task(send(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert len(started) == 2  # the third is waiting
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(started) == [0, 1, 2]


def test_registry_shares_one_budget_per_inbox() -> None:
    registry = BudgetRegistry()
    assert registry.for_inbox("a") is registry.for_inbox("a")
    assert registry.for_inbox("a") is not registry.for_inbox("b")

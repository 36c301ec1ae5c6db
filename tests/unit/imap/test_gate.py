"""The connect gate (imap/gate.py): a bound on set-ups in flight, INBOX connections first,
and no place lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.imap.budget import ConnectionRole
from inboxstream.imap.gate import ConnectGate

ROLES: list[ConnectionRole] = ["inbox", "sent", "other"]


async def _hold(gate: ConnectGate, role: ConnectionRole, seconds: float) -> None:
    async with gate.slot(role):
        assert gate.in_flight <= gate.limit
        await asyncio.sleep(seconds)


async def test_never_more_than_the_limit_at_once() -> None:
    gate = ConnectGate(3)
    await asyncio.gather(*(_hold(gate, ROLES[i % 3], 0.001 * (i % 4)) for i in range(40)))
    assert gate.peak == 3
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_inbox_connections_go_first_then_sent_then_other_each_in_arrival_order() -> None:
    gate = ConnectGate(1, record=True)
    release = asyncio.Event()

    async def first() -> None:
        async with gate.slot("other"):
            await release.wait()

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    order: list[str] = []

    async def queued(role: ConnectionRole, name: str) -> None:
        async with gate.slot(role):
            order.append(name)

    waiters = [
        asyncio.create_task(queued(role, name))
        for role, name in [
            ("other", "o1"),
            ("sent", "s1"),
            ("inbox", "i1"),
            ("other", "o2"),
            ("inbox", "i2"),
            ("sent", "s2"),
        ]
    ]
    await asyncio.sleep(0)
    assert gate.waiting == 6 and gate.in_flight == 1
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == ["i1", "i2", "s1", "s2", "o1", "o2"]
    assert gate.granted == ["other", "inbox", "inbox", "sent", "sent", "other", "other"]


@pytest.mark.parametrize("granted_first", [False, True])
async def test_a_cancelled_waiter_loses_no_place(granted_first: bool) -> None:
    gate = ConnectGate(1)
    release = asyncio.Event()

    async def hold_until_released() -> None:
        async with gate.slot("inbox"):
            await release.wait()

    holder = asyncio.create_task(hold_until_released())
    await asyncio.sleep(0)
    doomed = asyncio.create_task(_hold(gate, "inbox", 0))
    later = asyncio.create_task(_hold(gate, "sent", 0))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    if granted_first:
        # the place is handed to ``doomed`` and it is cancelled before it ever runs
        release.set()
        await holder
        doomed.cancel()
    else:
        doomed.cancel()  # cancelled while queued
        release.set()
        await holder
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(later, 1)
    assert gate.in_flight == 0 and gate.waiting == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectGate(0)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 5),
    jobs=st.lists(st.tuples(st.sampled_from(ROLES), st.integers(0, 3), st.booleans()), max_size=30),
)
def test_any_mix_of_roles_holds_and_cancellations_ends_with_every_place_back(
    limit: int, jobs: list[tuple[ConnectionRole, int, bool]]
) -> None:
    async def scenario() -> None:
        gate = ConnectGate(limit)
        tasks = [asyncio.create_task(_hold(gate, role, ms / 1000)) for role, ms, _ in jobs]
        await asyncio.sleep(0)
        for task, (_, _, cancel) in zip(tasks, jobs, strict=True):
            if cancel:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        assert gate.peak <= limit
        assert gate.in_flight == 0 and gate.waiting == 0

    asyncio.run(scenario())

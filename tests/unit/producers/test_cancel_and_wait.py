"""Stopping a worker stops its role tasks, even when the stop itself is cancelled meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from inboxstream.producers.service import cancel_and_wait


async def _stubborn(stopped: list[str]) -> None:
    """Swallows the first cancellation (as Python 3.11's wait_for can) and cleans up slowly."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0.05)
        stopped.append("role")


async def test_children_are_stopped_before_a_cancelled_parent_ends() -> None:
    stopped: list[str] = []
    child = asyncio.create_task(_stubborn(stopped))
    await asyncio.sleep(0)

    async def parent() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait({child})

    task = asyncio.create_task(parent())
    await asyncio.sleep(0)
    task.cancel()  # the worker is stopped: its finally stops the role task...
    await asyncio.sleep(0.01)
    task.cancel()  # ...and the stop is cancelled again while that is under way
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child.done()
    assert stopped == ["role"]

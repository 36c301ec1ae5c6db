"""/healthz fails when the event loop stops running, /readyz says why a component is not
ready, /metrics serves the registry, and a taken port leaves the command running."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from inboxstream.core.metrics import ROWS_INSERTED
from inboxstream.core.ops_server import serving_ops
from tests.helpers.net import free_port, http_get


async def test_health_readiness_and_metrics() -> None:
    why: list[str | None] = ["restoring partition state"]
    port = free_port()
    ops = await serving_ops("processor", "127.0.0.1", port, lambda: why[0], stall_after_s=1.0)
    assert ops is not None
    try:
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(http_get, port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, port, "/readyz") == (
            503,
            "restoring partition state\n",
        )
        why[0] = None
        assert await asyncio.to_thread(http_get, port, "/readyz") == (200, "ok\n")
        ROWS_INSERTED.labels("unit_table").inc(3)
        status, text = await asyncio.to_thread(http_get, port, "/metrics")
        assert status == 200
        assert 'inboxstream_rows_inserted_total{table="unit_table"} 3.0' in text

        # The loop blocks (a synchronous call gone wrong): liveness fails while it does.
        time.sleep(1.6)
        status, text = http_get(port, "/healthz")
        assert status == 503 and "event loop has not run" in text
        await asyncio.sleep(1.1)  # the loop runs again: alive again
        assert await asyncio.to_thread(http_get, port, "/healthz") == (200, "ok\n")
    finally:
        ops.stop()


async def test_a_broken_check_is_not_ready_with_the_reason() -> None:
    def broken() -> str | None:
        raise RuntimeError("no consumer")

    port = free_port()
    ops = await serving_ops("sink", "127.0.0.1", port, broken)
    assert ops is not None
    try:
        status, text = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 503 and "RuntimeError: no consumer" in text
    finally:
        ops.stop()


async def test_a_taken_port_or_port_zero_serves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert await serving_ops("sink", "127.0.0.1", 0, lambda: None) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert await serving_ops("producer", "127.0.0.1", port, lambda: None) is None
    assert "metrics.producer_port" in caplog.text

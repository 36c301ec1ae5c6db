"""``/metrics``, ``/healthz`` and ``/readyz`` of one long-running command, on a loopback port.

* ``/metrics``: prometheus-client's exposition of core/metrics.py (text format 0.0.4).
* ``/healthz`` (liveness): 200 while the command's event loop runs: a heartbeat task stamps
  the time every second, and more than ``metrics.stall_after_s`` without a stamp means the
  loop is wedged (a blocking call, a livelock): 503 with how long. Restart on failure.
* ``/readyz`` (readiness): 200 once the command does its work, else 503 with the reason the
  component gives (producer: topics, schemas and registry or lease ready; processor: in the
  group with partitions restored; sink: reading, and ClickHouse took the last insert).

Served by the standard library's WSGI server in a daemon thread (what prometheus-client's own
``start_http_server`` does), so a scrape never waits for, or blocks, the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from inboxstream.core.settings import MetricsSettings

log = logging.getLogger(__name__)

#: None when ready, else why not.
ReadyCheck = Callable[[], str | None]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a scrape every 15 s is not news


@dataclass
class OpsServer:
    component: str
    host: str
    port: int
    ready: ReadyCheck
    stall_after_s: float = 10.0
    _beat: float = field(default_factory=time.monotonic, init=False)
    _server: _Server | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> bool:
        """Bind and serve; False (logged) when the port is taken: the pipeline runs on without
        its metrics rather than not at all."""
        metrics = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return self._answer(start_response, self._health())
            if path == "/readyz":
                return self._answer(start_response, self._readiness())
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        try:
            self._server = make_server(
                self.host, self.port, app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            log.error(
                "%s: metrics and health endpoints not served: cannot listen on %s:%d (%s); "
                "set metrics.%s_port (0 turns it off)",
                self.component,
                self.host,
                self.port,
                exc.strerror or exc,
                self.component,
            )
            return False
        threading.Thread(
            target=self._server.serve_forever, name=f"ops-{self.component}", daemon=True
        ).start()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())
        log.info("%s: /metrics /healthz /readyz on %s:%d", self.component, *self.address)
        return True

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    def _health(self) -> str | None:
        stalled = time.monotonic() - self._beat
        if stalled > self.stall_after_s:
            return f"the event loop has not run for {stalled:.0f}s"
        return None

    def _readiness(self) -> str | None:
        try:
            return self.ready()
        except Exception as exc:  # noqa: BLE001 - a broken check is "not ready", with why
            return f"readiness check failed: {type(exc).__name__}: {exc}"

    @staticmethod
    def _answer(start_response: Callable[..., Any], problem: str | None) -> list[bytes]:
        body = (problem or "ok").encode() + b"\n"
        status = "503 Service Unavailable" if problem else "200 OK"
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@asynccontextmanager
async def ops_endpoints(
    metrics: MetricsSettings,
    component: Literal["producer", "processor", "sink"],
    ready: ReadyCheck,
    port: int | None = None,
) -> AsyncIterator[OpsServer | None]:
    """The command's endpoints while the block runs: on ``port``, or the settings' port of
    the component (``metrics.<component>_port``; 0 is off)."""
    server = await serving_ops(
        component,
        metrics.host,
        metrics.port_of(component) if port is None else port,
        ready,
        metrics.stall_after_s,
    )
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


async def serving_ops(
    component: str, host: str, port: int, ready: ReadyCheck, stall_after_s: float = 10.0
) -> OpsServer | None:
    """Start the ops server unless ``port`` is 0; None when off or not bound."""
    if port == 0:
        return None
    server = OpsServer(component, host, port, ready, stall_after_s)
    return server if server.start() else None

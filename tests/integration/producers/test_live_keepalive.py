"""A connection that dies without a FIN (a NAT drops it, a cable is pulled) is detected by
the keepalive within keepalive_s + read_timeout_s, and the inbox reconnects.

Between the service and the real Dovecot sits a TCP relay that can go silent: it keeps the
sockets open but stops passing bytes, which is exactly what a dead path looks like to both
ends. Connections opened after that pass normally again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import StatusEvent
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    idle_on,
    readers,
    running_service,
)
from tests.helpers.services import MailUser


@dataclass
class _Pipe:
    silent: bool = False


@dataclass
class SilenceableRelay:
    target: tuple[str, int]
    pipes: list[_Pipe] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _pump(
        self, pipe: _Pipe, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src.read(65536):
                if not pipe.silent:
                    dst.write(data)
                    await dst.drain()
        except OSError:
            pass
        if not pipe.silent:
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pipe = _Pipe()
        self.pipes.append(pipe)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(pipe, src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def go_silent(self) -> int:
        """Every connection open now stops passing bytes (without closing); returns how many."""
        for pipe in self.pipes:
            pipe.silent = True
        return len(self.pipes)


@contextlib.asynccontextmanager
async def relay_to(host: str, port: int) -> AsyncIterator[tuple[SilenceableRelay, int]]:
    relay = SilenceableRelay((host, port))
    server = await asyncio.start_server(relay._handle, "127.0.0.1", 0)
    try:
        yield relay, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(relay.tasks):
            task.cancel()


async def test_silent_dead_connection_is_detected_and_replaced(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    ep = dovecot.endpoints()
    s = fast_settings(settings, tmp_path / "inboxes", keepalive_s=1.0, read_timeout_s=1.0)
    async with relay_to(ep.host, ep.imaps_port) as (relay, port):
        # "localhost" is in the certificate, so TLS is verified through the relay as usual.
        inbox = mail_user.inbox().model_copy(update={"imap_host": "localhost", "imap_port": port})
        InboxRegistry(s.producer.registry_dir).add(inbox)
        async with readers(s) as (messages, status), running_service(s):
            await status.wait_for(
                idle_on("INBOX"),
                what="INBOX idle",
            )
            before = len(await status.read_to_end())
            assert relay.go_silent() >= 3
            events: list[StatusEvent] = await status.wait_for(
                lambda ev: (
                    any(
                        e.state == "disconnected" and e.error_kind == "timeout" for e in ev[before:]
                    )
                    and any(e.state == "connected" for e in ev[before:])
                ),
                timeout=60,
                what="dead connection detected and replaced",
            )
            dead = next(e for e in events[before:] if e.state == "disconnected")
            assert dead.retriable is True
            assert "presumed dead" in (dead.reason or "") or "in time" in (dead.reason or "")
            await asyncio.to_thread(deliver_many, mail_user.name, 1, start=42)
            await messages.wait_for(
                lambda ev: any(e.subject == "bulk 42" for e in ev),
                timeout=60,
                what="new mail over the replacement connection",
            )

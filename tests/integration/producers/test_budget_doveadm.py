"""The five-connection budget, counted on the server: while the service backfills an inbox
with INBOX, Sent and other folders and a MailSender sends through the same inbox (same
BudgetRegistry), Dovecot never sees more than five IMAP connections for that user, and the
budget (which also counts the SMTP connection) never exceeds five either."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import psutil

from inboxstream.app.demo import imap_client
from inboxstream.core.kafka import make_producer
from inboxstream.core.settings import Settings
from inboxstream.imap.budget import MAX_CONNECTIONS, BudgetRegistry
from inboxstream.infra import dovecot, postfix
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import StatusEvent
from inboxstream.send.sender import Draft, MailSender
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    readers,
    running_service,
)
from tests.helpers.services import MailUser

OTHER_FOLDERS = ("Archive", "Junk", "Trash")


def fill_folders(user: MailUser, per_folder: int) -> None:
    """Sent and three other folders get ``per_folder`` messages each (one IMAP session)."""
    client = imap_client(user.name, user.password)
    try:
        for folder in ("Sent", *OTHER_FOLDERS):
            for i in range(per_folder):
                raw = (
                    f"From: a@example.com\r\nTo: {user.name}\r\nSubject: {folder} {i}\r\n"
                    f"Message-ID: <{folder}-{i}@example.com>\r\n\r\n" + "text " * 80 + "\r\n"
                ).encode()
                assert client.append(folder, None, None, raw)[0] == "OK"
    finally:
        client.logout()


async def sample_connections(user: str, stop: asyncio.Event, seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(await asyncio.to_thread(dovecot.who, user))
        await asyncio.sleep(0.02)


async def test_five_connections_at_most_while_syncing_and_sending(
    settings: Settings,
    mail_user: MailUser,
    postfix_server: postfix.PostfixEndpoints,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(deliver_many, mail_user.name, 1500)
    await asyncio.to_thread(fill_folders, mail_user, 200)
    s = fast_settings(settings, tmp_path / "inboxes", batch_size=50)
    smtp = postfix.endpoints()
    inbox = mail_user.inbox().model_copy(
        update={
            "smtp_host": smtp.tls_hostname,
            "smtp_port": smtp.submission_port,
            "smtp_security": "starttls",
        }
    )
    InboxRegistry(s.producer.registry_dir).add(inbox)
    budgets = BudgetRegistry()
    kafka = make_producer(s.kafka)
    await kafka.start()
    sender = MailSender(kafka, s.topics, budgets)
    seen: list[int] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_connections(mail_user.name, stop_sampling, seen))
    try:
        async with readers(s) as (_, status), running_service(s, budgets):
            await status.wait_for(
                lambda ev: sum(e.state == "connected" for e in ev) >= 3,
                what="three sync connections",
            )
            sends = [
                sender.send(
                    inbox,
                    Draft(to=[mail_user.name], subject=f"sent while syncing {n}", text="hi"),
                    idempotency_key=f"budget-{n}",
                )
                for n in range(4)
            ]
            results = await asyncio.gather(*sends)
            assert all(r.sent_folder == "Sent" for r in results)
            caught_up: list[StatusEvent] = await status.wait_for(
                lambda ev: (
                    {e.folder for e in ev if e.state == "idle"}
                    >= {"INBOX", "Sent", "(other folders)"}
                ),
                timeout=120,
                what="every folder caught up",
            )
            assert not [e for e in caught_up if e.state == "disconnected"]
    finally:
        stop_sampling.set()
        await sampler
        await kafka.stop()
    budget = budgets.for_inbox(inbox.id)
    assert max(seen) <= MAX_CONNECTIONS == 5, f"Dovecot saw {max(seen)} connections"
    assert budget.peak <= MAX_CONNECTIONS
    # The test did exercise the limit: three sync connections plus a sender at once.
    assert max(seen) >= 4 and budget.peak == MAX_CONNECTIONS, (max(seen), budget.peak)
    assert len(seen) > 20
    # Everything was closed on stop: first on our side (no socket of this process to an IMAP
    # port is left once a loop turn ran the closes), then as the server counts it.
    await asyncio.sleep(0)
    server = dovecot.endpoints()
    imap_ports = {inbox.imap_port, server.imap_port, server.imaps_port}
    left = [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port in imap_ports and c.status != psutil.CONN_TIME_WAIT
    ]
    assert not left, left
    # Wait on the event loop, not beside it: a socket's close finishes in a loop callback.
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(dovecot.who, mail_user.name) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    lingering = dovecot.imap_sessions(mail_user.name)
    if lingering:
        # An imap process can outlive its client while it finishes a command or waits for a
        # lock another session of the user holds (seen once in CI, under the full suite's
        # load). The connection is still closed if nothing on either end of the wire holds
        # a TCP connection to an IMAP port open; that is what a leak would look like.
        open_on_the_wire = [
            c
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED
            and (
                (c.laddr and c.laddr.port in imap_ports) or (c.raddr and c.raddr.port in imap_ports)
            )
        ]
        assert not open_on_the_wire, (open_on_the_wire, describe_sessions(lingering))
        warnings.warn(
            f"Dovecot still counts {len(lingering)} session(s) whose client is gone: "
            f"{describe_sessions(lingering)}",
            stacklevel=1,
        )


def describe_sessions(pids: list[int]) -> str:
    """What each imap process is doing, and its last log lines: for a lingering session."""
    log = dovecot.log_path().read_text(errors="replace").splitlines()
    parts = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except (OSError, IndexError):
            state, wchan = "gone", "-"
        lines = [line for line in log if f"<{pid}>" in line][-3:]
        parts.append(f"pid {pid} {state.strip()} wchan={wchan}: " + " | ".join(lines))
    return "; ".join(parts)


async def test_an_idle_inbox_holds_two_connections_between_other_folder_rounds(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    """INBOX and Sent stay connected (IDLE); the other folders are read a round at a time on a
    connection of their own that is closed between rounds, and the rounds go on."""
    await asyncio.to_thread(fill_folders, mail_user, 2)
    s = fast_settings(
        settings, tmp_path / "inboxes", other_folders_interval_s=4.0, connect_jitter_s=0.0
    )
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(
            lambda ev: (
                {e.folder for e in ev if e.state == "idle"} >= {"INBOX", "Sent", "(other folders)"}
            ),
            timeout=60,
            what="every folder caught up",
        )
        await asyncio.sleep(0.5)  # the round's LOGOUT reaches the server
        between = [await asyncio.to_thread(dovecot.who, mail_user.name) for _ in range(10)]
        assert between == [2] * 10, between
        # The next round still comes, on a new connection: mail filed meanwhile arrives.
        client = imap_client(mail_user.name, mail_user.password)
        try:
            raw = (
                b"From: a@example.com\r\nSubject: filed later\r\nMessage-ID: <later@x>\r\n\r\nx\r\n"
            )
            assert client.append("Archive", None, None, raw)[0] == "OK"
        finally:
            client.logout()
        await messages.wait_for(
            lambda ev: any(e.subject == "filed later" and e.folder == "Archive" for e in ev),
            timeout=30,
            what="mail filed in Archive between rounds",
        )

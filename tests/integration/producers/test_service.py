"""The producer service on the real Dovecot and Kafka: a wrong password stops that inbox
with one login attempt and a ``disconnected`` status, a fixed password restarts it, inboxes
come and go at run time, a dropped connection is reconnected, and one bad inbox never stalls
the others."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import SecretStr

from inboxstream.core.settings import Settings
from inboxstream.imap.gate import ConnectGate
from inboxstream.infra import dovecot
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import StatusEvent
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    idle_on,
    new_messages,
    readers,
    running_service,
)
from tests.helpers.services import MailUser


def auth_failures(user: str) -> int:
    """Failed logins of ``user`` in Dovecot's log (imap-login writes one line per attempt)."""
    log = Path(dovecot.log_path())
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if f"user=<{user}>" in line and "auth failed" in line
    )


async def logged_auth_failures(user: str, before: int, wait_s: float = 5.0) -> int:
    """``auth_failures`` since ``before``, once Dovecot's log process has written at least
    one: the producer hears the refusal before that line reaches the file (a CI run read 0)."""
    deadline = time.monotonic() + wait_s
    while (failures := auth_failures(user) - before) < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return failures


async def test_wrong_password_disconnects_once_then_new_password_reconnects(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    await asyncio.to_thread(deliver_many, mail_user.name, 3)
    s = fast_settings(settings, tmp_path / "inboxes")
    registry = InboxRegistry(s.producer.registry_dir)
    good = mail_user.inbox()
    registry.add(good.model_copy(update={"password": SecretStr("wrong-password")}))
    before = auth_failures(mail_user.name)
    async with readers(s) as (messages, status), running_service(s) as service:
        events: list[StatusEvent] = await status.wait_for(
            lambda ev: any(e.state == "disconnected" for e in ev), what="disconnected"
        )
        down = next(e for e in events if e.state == "disconnected")
        assert (down.error_kind, down.retriable) == ("auth", False)
        assert "wrong-password" not in (down.reason or "")
        assert "password" in (down.reason or "") or "rejected" in (down.reason or "")
        # Ten backoff periods later: still one attempt, one status event, no retry storm.
        await asyncio.sleep(10 * s.producer.backoff_max_s)
        events = await status.read_to_end()
        assert [e.state for e in events] == ["disconnected"]
        assert service.workers[good.id].worker.connects == 0
        assert auth_failures(mail_user.name) - before == 1

        registry.add(good)  # the owner re-entered the password: the inbox restarts
        await status.wait_for(
            idle_on("INBOX"),
            what="INBOX idle after the fix",
        )
        got = await messages.wait_for(
            lambda ev: len(new_messages(ev, "INBOX")) == 3, what="the mail after the fix"
        )
        assert {e.subject for e in new_messages(got)} >= {"bulk 0", "bulk 1", "bulk 2"}


async def test_inboxes_added_and_removed_at_run_time_and_bad_one_stalls_nothing(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    users = [MailUser(f"u{unique}{n}@inboxstream.test", f"pw-{unique}-{n}") for n in range(2)]
    for user in users:
        dovecot.add_user(user.name, user.password)
    try:
        for n, user in enumerate(users):
            await asyncio.to_thread(deliver_many, user.name, 2 + n)
        s = fast_settings(settings, tmp_path / "inboxes")
        registry = InboxRegistry(s.producer.registry_dir)
        # A dead inbox (nothing listens on that port) next to the good ones.
        registry.add(users[0].inbox().model_copy(update={"id": f"dead-{unique}", "imap_port": 1}))
        async with readers(s) as (messages, status), running_service(s):
            registry.add(users[0].inbox())
            await messages.wait_for(
                lambda ev: len(new_messages(ev)) == 2, what="first inbox synced"
            )
            registry.add(users[1].inbox())  # added while running
            got = await messages.wait_for(
                lambda ev: (
                    len({e.inbox_id for e in new_messages(ev)}) == 2 and len(new_messages(ev)) == 5
                ),
                what="second inbox synced",
            )
            assert {e.inbox_id for e in got} == {users[0].name, users[1].name}
            statuses: list[StatusEvent] = await status.wait_for(
                lambda ev: sum(e.inbox_id == f"dead-{unique}" for e in ev) >= 3,
                what="the dead inbox retrying",
            )
            dead = [e for e in statuses if e.inbox_id == f"dead-{unique}"]
            assert {(e.state, e.error_kind, e.retriable) for e in dead} == {
                ("disconnected", "refused", True)
            }

            assert registry.remove(users[0].name)  # removed while running
            await status.wait_for(
                lambda ev: any(
                    e.inbox_id == users[0].name
                    and e.state == "disconnected"
                    and "removed" in (e.reason or "")
                    for e in ev
                ),
                what="removal status",
            )
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(dovecot.who, users[0].name) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            assert await asyncio.to_thread(dovecot.who, users[0].name) == 0
            # The removed inbox no longer syncs; the other one still does.
            await asyncio.to_thread(deliver_many, users[0].name, 1, start=100)
            await asyncio.to_thread(deliver_many, users[1].name, 1, start=100)
            got = await messages.wait_for(
                lambda ev: any(e.inbox_id == users[1].name and e.subject == "bulk 100" for e in ev),
                what="live mail of the remaining inbox",
            )
            assert not [e for e in got if e.inbox_id == users[0].name and e.uid > 2]
    finally:
        for user in users:
            dovecot.remove_user(user.name)


async def test_dropped_connections_reconnect_and_sync_continues(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(
            idle_on("INBOX"),
            what="INBOX idle",
        )
        await asyncio.to_thread(dovecot.doveadm, "kick", mail_user.name)
        events: list[StatusEvent] = await status.wait_for(
            lambda ev: (
                any(e.state == "disconnected" for e in ev)
                and sum(e.state == "connected" for e in ev) >= 4
            ),
            what="disconnected, then connected again",
        )
        down = next(e for e in events if e.state == "disconnected")
        assert down.retriable is True
        await asyncio.to_thread(deliver_many, mail_user.name, 1, start=7)
        await messages.wait_for(
            lambda ev: any(e.subject == "bulk 7" for e in ev), what="mail after reconnect"
        )


async def test_one_process_holds_many_inboxes(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    """Fifteen inboxes (45 IMAP connections) in one event loop, each backfilled and live.

    Fifteen, not hundreds: the shared test Dovecot runs at most 100 imap processes
    (default_process_limit) for every test running at the same time."""
    users = [MailUser(f"m{unique}{n}@inboxstream.test", f"pw-{unique}-{n}") for n in range(15)]
    s = fast_settings(settings, tmp_path / "inboxes")
    registry = InboxRegistry(s.producer.registry_dir)
    try:
        for user in users:
            dovecot.add_user(user.name, user.password)
            await asyncio.to_thread(deliver_many, user.name, 2)
            registry.add(user.inbox())
        async with readers(s) as (messages, status), running_service(s) as service:
            await status.wait_for(
                lambda ev: (
                    len({e.inbox_id for e in ev if e.state == "idle" and e.folder == "INBOX"})
                    == len(users)
                ),
                timeout=120,
                what="every inbox idle",
            )
            got = await messages.read_to_end()
            assert len(new_messages(got)) == 2 * len(users)
            assert {e.inbox_id for e in got} == {u.name for u in users}
            assert all(not r.task.done() for r in service.workers.values())
            # Live on every one of them: one new message each.
            for user in users:
                await asyncio.to_thread(deliver_many, user.name, 1, start=50)
            await messages.wait_for(
                lambda ev: (
                    len([e for e in new_messages(ev) if e.subject == "bulk 50"]) == len(users)
                ),
                timeout=120,
                what="live mail in every inbox",
            )
    finally:
        for user in users:
            dovecot.remove_user(user.name)


async def test_revoked_access_while_running_stops_the_inbox_without_a_storm(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (_, status), running_service(s) as service:
        await status.wait_for(
            idle_on("INBOX"),
            what="INBOX idle",
        )
        before = auth_failures(mail_user.name)
        # The account is deleted: Dovecot kicks its sessions and refuses new logins.
        await asyncio.to_thread(dovecot.remove_user, mail_user.name, wait=True)
        events: list[StatusEvent] = await status.wait_for(
            lambda ev: any(e.state == "disconnected" and e.error_kind == "auth" for e in ev),
            what="disconnected: auth",
        )
        stopped = next(e for e in events if e.error_kind == "auth")
        assert stopped.retriable is False
        worker = service.workers[mail_user.name]
        assert worker.task.done() and worker.worker.stopped is not None
        failures = await logged_auth_failures(mail_user.name, before)
        assert 1 <= failures <= 3  # at most one per connection that was open
        await asyncio.sleep(10 * s.producer.backoff_max_s)
        assert auth_failures(mail_user.name) - before == failures  # and then silence
        after = await status.read_to_end()
        assert (
            after[-1].event_id
            == next(e for e in reversed(after) if e.error_kind == "auth").event_id
        )


async def test_connection_set_ups_pass_the_gate_inbox_connections_first(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    """Six inboxes starting at once through a gate of two: never more than two set-ups at a
    time, and every INBOX connection is set up before any sent or other-folders one."""
    users = [MailUser(f"g{unique}{n}@inboxstream.test", f"pw-{unique}-{n}") for n in range(6)]
    s = fast_settings(settings, tmp_path / "inboxes", connect_jitter_s=0.0)
    registry = InboxRegistry(s.producer.registry_dir)
    gate = ConnectGate(2, record=True)
    try:
        for user in users:
            dovecot.add_user(user.name, user.password)
            registry.add(user.inbox())
        async with readers(s) as (_, status), running_service(s, gate=gate):
            await status.wait_for(
                lambda ev: (
                    len({e.inbox_id for e in ev if e.state == "idle" and e.folder == "Sent"})
                    == len(users)
                ),
                timeout=120,
                what="every inbox's sent folder idle",
            )
    finally:
        for user in users:
            dovecot.remove_user(user.name)
    assert gate.peak == 2
    assert gate.granted[: len(users)] == ["inbox"] * len(users), gate.granted
    assert set(gate.granted[len(users) :]) <= {"sent", "other", "inbox"}

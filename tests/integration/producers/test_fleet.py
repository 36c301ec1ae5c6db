"""A fleet of producer processes leasing inboxes through Kafka's group membership, as deployed
(``inboxstream producer run`` subprocesses, registry topic, real Dovecot and Kafka):

* a second process takes half of the inboxes, and no inbox is synced by two processes at once
  (``doveadm who`` sampled through the rebalance; the old owner's last word on a moved inbox
  precedes the new owner's first, in the inbox's own status partition);
* kill -9 of a member hands its inboxes to the survivor, which loses no message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from inboxstream.core.settings import Settings, TopicSpec
from inboxstream.core.vault import SecretBox, write_key_file
from inboxstream.infra import dovecot
from inboxstream.producers.registry import InboxRegistry
from inboxstream.producers.registry_topic import TopicRegistry
from inboxstream.schemas.models import MessageEvent, StatusEvent
from tests.helpers.pipeline import read_records
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    new_messages,
    readers,
    service_env,
    start_producer,
)
from tests.helpers.services import MailUser

INBOXES = 6


def fleet_settings(settings: Settings, tmp_path: Path, unique: str) -> Settings:
    s = fast_settings(
        settings,
        tmp_path / "unused-registry-dir",
        registry="topic",
        fleet_group=f"fleet-{unique}",
        fleet_session_timeout_ms=6_000,
        connect_jitter_s=0.0,
        parse_workers=0,
        secret_key_file=tmp_path / "fleet.key",
    )
    # One partition per inbox: the split is then by partition count (a real fleet has 60).
    registry = TopicSpec(
        name=f"{s.topics.messages.name}.registry", retention_ms=-1, compacted=True, partitions=6
    )
    return s.model_copy(update={"topics": s.topics.model_copy(update={"registry": registry})})


def member_name(proc: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


@asynccontextmanager
async def fleet_users(unique: str, tmp_path: Path, s: Settings) -> AsyncIterator[list[MailUser]]:
    users = [MailUser(f"f{unique}{n}@inboxstream.test", f"pw-{unique}-{n}") for n in range(INBOXES)]
    try:
        for user in users:
            dovecot.add_user(user.name, user.password)
            await asyncio.to_thread(deliver_many, user.name, 2)
        registry = TopicRegistry(s, SecretBox.default(s.producer.secret_key_file))
        created = await registry.add_many([u.inbox() for u in users])
        assert all(created.values())
        view = await registry.read()
        assert sorted(p for p, _ in view.inboxes.values()) == list(range(INBOXES))  # placed
        yield users
    finally:
        for user in users:
            dovecot.remove_user(user.name)


def owners(events: list[StatusEvent]) -> dict[str, str]:
    """Each inbox's producer, by its latest INBOX idle status."""
    return {e.inbox_id: e.producer for e in events if e.state == "idle" and e.folder == "INBOX"}


def connections(users: list[MailUser]) -> dict[str, int]:
    names = {u.name for u in users}
    counts = dict.fromkeys(names, 0)
    for line in dovecot.doveadm("who", "-1").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in names and fields[1] == "imap":
            counts[fields[0]] += 1
    return counts


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(240)
async def test_a_second_member_takes_half_and_no_inbox_is_ever_held_twice(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    s = fleet_settings(settings, tmp_path, unique)
    log = tmp_path / "fleet.log"
    async with fleet_users(unique, tmp_path, s) as users, readers(s) as (messages, status):
        a = start_producer(s, log)
        b: subprocess.Popen[bytes] | None = None
        peak: dict[str, int] = {}
        sampling = True

        async def sample() -> None:
            while sampling:
                for user, n in (await asyncio.to_thread(connections, users)).items():
                    peak[user] = max(peak.get(user, 0), n)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            await status.wait_for(
                lambda ev: (
                    set(owners(ev).values()) == {member_name(a)} and len(owners(ev)) == INBOXES
                ),
                timeout=90,
                what="every inbox idle on the first member",
            )
            b = start_producer(s, log)
            got: list[StatusEvent] = await status.wait_for(
                lambda ev: (
                    sorted(
                        list(owners(ev).values()).count(m) for m in (member_name(a), member_name(b))
                    )
                    == [3, 3]
                ),
                timeout=90,
                what="the inboxes split 3/3 over the two members",
            )
            # Live mail still flows, once per message, to whoever owns the inbox now.
            for user in users:
                await asyncio.to_thread(deliver_many, user.name, 1, start=100)
            seen: list[MessageEvent] = await messages.wait_for(
                lambda ev: sum(e.subject == "bulk 100" for e in new_messages(ev)) >= INBOXES,
                timeout=60,
                what="a live message in every inbox",
            )
        finally:
            sampling = False
            await sampler
            stop(a)
            if b is not None:
                stop(b)
        assert len(seen) and max(peak.values()) <= 3, f"an inbox held twice: {peak}"
        # In each moved inbox's status partition: the first member's last event comes before
        # the second member's first one, and it says the inbox was let go.
        moved = [i for i, m in owners(got).items() if m == member_name(b)]
        assert len(moved) == 3
        for inbox in moved:
            mine = [e for e in got if e.inbox_id == inbox]
            by_b = [n for n, e in enumerate(mine) if e.producer == member_name(b)]
            by_a = [n for n, e in enumerate(mine) if e.producer == member_name(a)]
            assert max(by_a) < min(by_b), [(e.producer, e.state, e.reason) for e in mine]
            assert mine[max(by_a)].state == "disconnected"
            assert "rebalancing" in (mine[max(by_a)].reason or "")
        live = [e for e in new_messages(seen) if e.subject == "bulk 100"]
        assert sorted(e.inbox_id for e in live) == sorted(u.name for u in users)  # once each


@pytest.mark.timeout(240)
async def test_kill_9_of_a_member_hands_its_inboxes_over_and_loses_nothing(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    s = fleet_settings(settings, tmp_path, unique)
    log = tmp_path / "fleet.log"
    async with fleet_users(unique, tmp_path, s) as users, readers(s) as (messages, status):
        a, b = start_producer(s, log), start_producer(s, log)
        try:
            await status.wait_for(
                lambda ev: (
                    len(owners(ev)) == INBOXES
                    and set(owners(ev).values()) == {member_name(a), member_name(b)}
                ),
                timeout=90,
                what="every inbox idle, on both members",
            )
            os.kill(b.pid, signal.SIGKILL)
            b.wait(10)
            # Mail that comes while the dead member's inboxes have no owner.
            for user in users:
                await asyncio.to_thread(deliver_many, user.name, 2, start=200)
            await status.wait_for(
                lambda ev: set(owners(ev).values()) == {member_name(a)},
                timeout=90,
                what="every inbox idle on the survivor",
            )
            got: list[MessageEvent] = await messages.wait_for(
                lambda ev: (
                    sum((e.subject or "").startswith("bulk 20") for e in new_messages(ev))
                    >= 2 * INBOXES
                ),
                timeout=60,
                what="the mail that came during the takeover",
            )
        finally:
            stop(a)
            if b.poll() is None:
                b.kill()
        per_inbox = {
            u.name: sorted(
                e.subject for e in new_messages(got) if e.inbox_id == u.name and e.folder == "INBOX"
            )
            for u in users
        }
        for user, subjects in per_inbox.items():
            # the backfill and the mail during the takeover, nothing missing
            assert {"bulk 0", "bulk 1", "bulk 200", "bulk 201"} <= set(subjects), user


async def test_inbox_migrate_copies_the_folder_registry_into_the_topic(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    s = fleet_settings(settings, tmp_path, unique)
    s = s.model_copy(
        update={"producer": s.producer.model_copy(update={"registry_dir": tmp_path / "folder"})}
    )
    box = SecretBox.default(s.producer.secret_key_file)
    folder = InboxRegistry(s.producer.registry_dir, box)
    users = [MailUser(f"m{n}{unique}@inboxstream.test", f"pw-{n}-{unique}") for n in range(3)]
    for user in users:
        folder.add(user.inbox())
    cli = Path(sys.executable).with_name("inboxstream")
    done = await asyncio.to_thread(
        subprocess.run,
        [str(cli), "inbox", "migrate"],
        env=service_env(s),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert all(u.password not in done.stdout + done.stderr for u in users)
    view = await TopicRegistry(s, box).read()
    assert {i: inbox for i, (_, inbox) in view.inboxes.items()} == {
        u.name: u.inbox() for u in users
    }
    # the topic holds Fernet tokens, never a password
    raw = await read_records(s, s.topics.registry.name)
    assert len(raw) == 3
    assert all(u.password.encode() not in (r.value or b"") for u in users for r in raw)


async def test_inbox_rekey_rewrites_the_topic_under_the_new_key(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    s = fleet_settings(settings, tmp_path, unique)
    old, new = Fernet.generate_key(), Fernet.generate_key()
    write_key_file(tmp_path / "old.key", [old])
    write_key_file(tmp_path / "new.key", [new])
    old_box, new_box = (
        SecretBox.default(tmp_path / "old.key"),
        SecretBox.default(tmp_path / "new.key"),
    )
    users = [MailUser(f"k{n}{unique}@inboxstream.test", f"pw-{n}-{unique}") for n in range(2)]
    await TopicRegistry(s, old_box).add_many([u.inbox() for u in users])
    env = service_env(s) | {"INBOXSTREAM_SECRET_KEY": f"{new.decode()},{old.decode()}"}
    cli = Path(sys.executable).with_name("inboxstream")
    done = await asyncio.to_thread(
        subprocess.run, [str(cli), "inbox", "rekey"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    after = await TopicRegistry(s, new_box).read()
    assert {i: inbox for i, (_, inbox) in after.inboxes.items()} == {
        u.name: u.inbox() for u in users
    }
    assert set((await TopicRegistry(s, old_box).read()).errors) == {u.name for u in users}
    refused = await asyncio.to_thread(
        subprocess.run,
        [str(cli), "inbox", "rekey", "--new-key"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "every producer" in refused.stderr

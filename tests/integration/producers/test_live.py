"""Live sync on the real Dovecot and Kafka: IDLE delivers new mail and sent-folder APPENDs,
CONDSTORE/QRESYNC deliver flag changes and expunges, a UIDVALIDITY change resyncs, and a
server without IDLE/CONDSTORE is polled."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

from inboxstream.app.demo import imap_client
from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import CheckpointEvent, MessageEvent, StatusEvent
from tests.helpers.service import (
    checkpoint_reader,
    fast_settings,
    idle_on,
    new_messages,
    readers,
    running_service,
)
from tests.helpers.services import MailUser


def mail(subject: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg.set_content(f"body of {subject}\n")
    return bytes(msg)


def append(user: MailUser, folder: str, raw: bytes) -> None:
    client = imap_client(user.name, user.password)
    try:
        typ, data = client.append(folder, "(\\Seen)", None, raw)
        assert typ == "OK", data
    finally:
        client.logout()


def subjects(events: list[MessageEvent], folder: str) -> set[str | None]:
    return {e.subject for e in new_messages(events, folder)}


async def test_idle_delivers_new_mail_and_sent_append(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    for i in range(3):
        dovecot.deliver(mail_user.name, mail(f"old {i}", mail_user.name))
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        await status.wait_for(idle_on("Sent"), what="Sent idle")
        assert subjects(await messages.poll(), "INBOX") == {"old 0", "old 1", "old 2"}

        await asyncio.to_thread(dovecot.deliver, mail_user.name, mail("live one", mail_user.name))
        events = await messages.wait_for(
            lambda ev: "live one" in subjects(ev, "INBOX"), what="delivered mail"
        )
        await asyncio.to_thread(append, mail_user, "Sent", mail("my reply", "x@example.com"))
        events = await messages.wait_for(
            lambda ev: "my reply" in subjects(ev, "Sent"), what="sent append"
        )
        sent = [e for e in new_messages(events, "Sent") if e.subject == "my reply"]
        assert sent[0].folder_role == "sent"
        live = [e for e in new_messages(events, "INBOX") if e.subject == "live one"]
        assert live[0].uid == 4 and live[0].folder_role == "inbox"
        statuses: list[StatusEvent] = await status.poll()
        assert not [e for e in statuses if e.state == "disconnected"]
        syncing = [(e.progress_done, e.progress_total) for e in statuses if e.folder == "INBOX"]
        assert (3, 3) in syncing  # "syncing n of m", last report at the end of the backfill
        first = statuses.index(next(e for e in statuses if e.state == "connected"))
        assert first == 0  # connected comes before anything else

    cps = checkpoint_reader(s)
    try:
        got = await cps.wait_for(
            lambda ev: any(c.folder == "INBOX" and c.last_uid == 4 for c in ev),
            what="INBOX checkpoint at UID 4",
        )
        assert all(c.inbox_id == mail_user.name for c in got)
    finally:
        await cps.close()


def store_and_expunge(user: MailUser, flag_uid: int, expunge_uid: int) -> None:
    client = imap_client(user.name, user.password)
    try:
        client.select("INBOX")
        assert client.uid("STORE", str(flag_uid), "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert client.uid("STORE", str(expunge_uid), "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert client.expunge()[0] == "OK"
    finally:
        client.logout()


def flagged(events: list[MessageEvent], uid: int) -> bool:
    return any(
        e.event_type == "message.flags" and e.uid == uid and "\\Flagged" in e.flags for e in events
    )


def expunged(events: list[MessageEvent], uid: int) -> bool:
    return any(e.event_type == "message.expunged" and e.uid == uid for e in events)


async def test_flag_change_and_expunge_with_condstore_qresync(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    for i in range(3):
        dovecot.deliver(mail_user.name, mail(f"m {i}", mail_user.name))
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        await asyncio.to_thread(store_and_expunge, mail_user, 1, 2)
        events = await messages.wait_for(
            lambda ev: flagged(ev, 1) and expunged(ev, 2), what="flags + expunge events"
        )
    flag = next(e for e in events if e.event_type == "message.flags" and e.uid == 1)
    new = next(e for e in new_messages(events) if e.uid == 1)
    assert flag.message_id == new.message_id == "m-0@example.com"
    assert flag.modseq is not None and new.modseq is not None and flag.modseq > new.modseq
    assert flag.event_id != new.event_id
    gone = next(e for e in events if e.event_type == "message.expunged")
    assert (gone.uid, gone.folder, gone.uidvalidity) == (2, "INBOX", new.uidvalidity)
    # The expunged message's flag change (\Deleted) may be reported, but never a third message.
    assert not expunged(events, 1) and not expunged(events, 3)


async def test_server_without_idle_or_condstore_is_polled(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    """127.0.0.2 advertises no IDLE, CONDSTORE, QRESYNC or SPECIAL-USE: NOOP polling finds
    new mail, the "sent" name rule finds Sent, and UID SEARCH diffs find expunges."""
    for i in range(2):
        dovecot.deliver(mail_user.name, mail(f"p {i}", mail_user.name))
    ep = dovecot.endpoints()
    inbox = mail_user.inbox().model_copy(update={"imap_host": ep.limited_host})
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(inbox)
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        await status.wait_for(idle_on("Sent"), what="Sent idle (found by name)")
        await asyncio.to_thread(dovecot.deliver, mail_user.name, mail("polled", mail_user.name))
        await messages.wait_for(lambda ev: "polled" in subjects(ev, "INBOX"), what="polled mail")
        await asyncio.to_thread(store_and_expunge, mail_user, 1, 2)
        events = await messages.wait_for(lambda ev: expunged(ev, 2), what="expunge by diff")
    assert all(e.modseq is None for e in new_messages(events))
    assert not [e for e in events if e.event_type == "message.flags"]  # no CONDSTORE: none


def expunge_uids(user: MailUser, *uids: int) -> None:
    client = imap_client(user.name, user.password)
    try:
        client.select("INBOX")
        for uid in uids:
            assert client.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert client.expunge()[0] == "OK"
    finally:
        client.logout()


async def test_expunges_while_no_producer_ran_are_reported_without_qresync(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    """Exchange-like (no CONDSTORE, no QRESYNC): the checkpoint keeps the folder's UIDs as
    ranges, so messages expunged while the producer was stopped are reported at its start."""
    for i in range(5):
        dovecot.deliver(mail_user.name, mail(f"k {i}", mail_user.name))
    ep = dovecot.endpoints()
    inbox = mail_user.inbox().model_copy(update={"imap_host": ep.limited_host})
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(inbox)
    cps = checkpoint_reader(s)
    async with readers(s) as (messages, status):
        async with running_service(s):
            await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        kept: list[CheckpointEvent] = await cps.wait_for(
            lambda ev: any(c.folder == "INBOX" and c.known_uids == "1:5" for c in ev),
            what="the INBOX UID set in a checkpoint",
        )
        assert kept
        await asyncio.to_thread(expunge_uids, mail_user, 2, 3)  # nobody is watching
        await asyncio.to_thread(dovecot.deliver, mail_user.name, mail("k 5", mail_user.name))
        async with running_service(s):
            events = await messages.wait_for(
                lambda ev: expunged(ev, 2) and expunged(ev, 3) and "k 5" in subjects(ev, "INBOX"),
                what="the expunges made while stopped, and the new mail",
            )
            await asyncio.sleep(1.0)  # a second check finds nothing more
            events = await messages.read_to_end()
        latest = [c for c in await cps.read_to_end() if c.folder == "INBOX"][-1]
    gone = sorted(e.uid for e in events if e.event_type == "message.expunged")
    assert gone == [2, 3]  # each once, and nothing that is still there
    assert latest.known_uids == "1,4:6"


async def test_uidvalidity_change_resyncs_the_folder(
    settings: Settings, mail_user: MailUser, tmp_path: Path
) -> None:
    for i in range(2):
        dovecot.deliver(mail_user.name, mail(f"v {i}", mail_user.name))
    s = fast_settings(settings, tmp_path / "inboxes")
    InboxRegistry(s.producer.registry_dir).add(mail_user.inbox())
    async with readers(s) as (messages, status):
        async with running_service(s):
            await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        before = {e.uidvalidity for e in new_messages(await messages.poll(), "INBOX")}
        assert len(before) == 1
        new_validity = before.pop() + 1000
        await asyncio.to_thread(
            dovecot.doveadm,
            "mailbox",
            "update",
            "-u",
            mail_user.name,
            "--uid-validity",
            str(new_validity),
            "INBOX",
        )
        async with running_service(s):
            await status.wait_for(
                lambda ev: any(e.state == "resync" and e.folder == "INBOX" for e in ev),
                what="resync status",
            )
            await messages.wait_for(
                lambda ev: (
                    len({e.uid for e in new_messages(ev) if e.uidvalidity == new_validity}) == 2
                ),
                what="folder re-read under the new UIDVALIDITY",
            )
        resync = next(e for e in await status.poll() if e.state == "resync")
    assert str(new_validity) in (resync.reason or "")


async def test_a_virtual_all_folder_is_not_synced_so_each_message_is_one_message(
    settings: Settings, dovecot_server: dovecot.DovecotEndpoints, unique: str, tmp_path: Path
) -> None:
    """Dovecot's virtual Virtual/All (RFC 6154 \\All, like Gmail's All Mail) shows every
    message again; it gets no connection and no events, so each message is published once,
    from the folder that holds it, also after it moved."""
    user = MailUser(f"va{unique}@inboxstream.test", f"pw-{unique}")
    dovecot.add_user(user.name, user.password, virtual_all=True)
    try:
        for i in range(3):
            dovecot.deliver(user.name, mail(f"va {i}", user.name))
        append(user, "Archive", mail("va filed", user.name))
        client = imap_client(user.name, user.password)
        try:
            assert client.select("Virtual/All", readonly=True)[1] == [b"4"]  # it does show them
        finally:
            client.logout()
        s = fast_settings(settings, tmp_path / "inboxes")
        InboxRegistry(s.producer.registry_dir).add(user.inbox())
        async with readers(s) as (messages, status), running_service(s):
            await status.wait_for(
                lambda ev: (
                    {e.folder for e in ev if e.state == "idle"}
                    >= {"INBOX", "Sent", "(other folders)"}
                ),
                what="every folder caught up",
            )
            # archive one: it leaves INBOX and is filed in Archive (it stays in Virtual/All)
            client = imap_client(user.name, user.password)
            try:
                client.select("INBOX")
                assert client.uid("MOVE", "1", "Archive")[0] == "OK"
            finally:
                client.logout()
            events = await messages.wait_for(
                lambda ev: expunged(ev, 1) and "va 0" in subjects(ev, "Archive"),
                what="the archived message in Archive",
            )
            await asyncio.sleep(1.5)  # another round of the other folders
            events = await messages.read_to_end()
    finally:
        dovecot.remove_user(user.name)
    assert not [e for e in events if e.folder.startswith("Virtual")]
    new = new_messages(events)
    by_folder = sorted((e.folder, e.subject) for e in new)
    assert by_folder == [
        ("Archive", "va 0"),
        ("Archive", "va filed"),
        ("INBOX", "va 0"),
        ("INBOX", "va 1"),
        ("INBOX", "va 2"),
    ]

"""Live sync on the real Dovecot and Kafka: IDLE delivers new mail and sent-folder APPENDs,
CONDSTORE/QRESYNC deliver flag changes and expunges, a UIDVALIDITY change resyncs, and a
server without IDLE/CONDSTORE is polled."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

from infra import dovecot
from producers.registry import InboxRegistry
from runtime.demo import imap_client
from runtime.settings import Settings
from schemas.models import MessageEvent, StatusEvent
from tests.integration.conftest import MailUser
from tests.integration.producers.service_helpers import (
    checkpoint_reader,
    fast_settings,
    new_messages,
    readers,
    running_service,
)


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


def idle_on(folder: str):  # type: ignore[no-untyped-def]
    return lambda events: any(e.state == "idle" and e.folder == folder for e in events)


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

    cps = checkpoint_reader(s)
    try:
        got = await cps.wait_for(
            lambda ev: any(c.folder == "INBOX" and c.last_uid == 4 for c in ev),
            what="INBOX checkpoint at UID 4",
        )
        assert all(c.inbox_id == mail_user.name for c in got)
    finally:
        await cps.close()

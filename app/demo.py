"""The end-to-end demo: a real mailbox in Dovecot, synced into Kafka, threaded and matched
to CRM mail by the exactly-once processor, projected into ClickHouse.

Re-runnable: the demo mailbox is filled only when empty, and re-syncing publishes the same
event ids, which the processor and the ReplacingMergeTree tables collapse, so the printed
figures stay the same.
"""

from __future__ import annotations

import hashlib
import imaplib
import secrets
import smtplib
import ssl
from collections.abc import Iterable
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from inboxstream.app.mailgen import GeneratedMail
from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.paths import state_dir
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.infra import dovecot
from inboxstream.schemas.models import OutboundEvent
from inboxstream.schemas.serde import serde_for

DEMO_USER = "demo@inboxstream.test"


def demo_password() -> str:
    """A random password kept in the state folder (mode 0600), never printed."""
    path: Path = state_dir() / "demo-password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def demo_inbox(password: str, user: str = DEMO_USER) -> InboxSettings:
    ep = dovecot.endpoints()
    return InboxSettings(
        id=user,
        imap_host=ep.tls_hostname,
        imap_port=ep.imaps_port,
        imap_security="tls",
        username=user,
        password=password,
        ca_file=ep.ca_cert,
    )


def imap_client(user: str, password: str) -> imaplib.IMAP4_SSL:
    """A plain stdlib client for filling mailboxes (not the code under test)."""
    ep = dovecot.endpoints()
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    client = imaplib.IMAP4_SSL(ep.tls_hostname, ep.imaps_port, ssl_context=ctx)
    client.login(user, password)
    return client


def message_count(user: str, password: str, folder: str = "INBOX") -> int:
    client = imap_client(user, password)
    try:
        typ, data = client.select(folder, readonly=True)
        return int(data[0] or 0) if typ == "OK" else 0
    finally:
        client.logout()


def fill_mailbox(user: str, password: str, mails: Iterable[GeneratedMail]) -> dict[str, int]:
    """Received mail arrives through LMTP like real mail; the owner's own mail is APPENDed to
    Sent the way a mail client files it. One connection each, reused for every message."""
    ep = dovecot.endpoints()
    counts: dict[str, int] = {}
    client = imap_client(user, password)
    try:
        with smtplib.LMTP(ep.host, ep.lmtp_port, timeout=30) as lmtp:
            for mail in mails:
                if mail.folder == "INBOX":
                    lmtp.sendmail("sender@inboxstream.test", [user], mail.raw)
                else:
                    typ, data = client.append(mail.folder, "(\\Seen)", None, mail.raw)
                    if typ != "OK":
                        raise RuntimeError(f"APPEND to {mail.folder} failed: {data!r}")
                counts[mail.folder] = counts.get(mail.folder, 0) + 1
    finally:
        client.logout()
    return counts


def crm_outbound_events(inbox_id: str, mails: Iterable[GeneratedMail]) -> list[OutboundEvent]:
    """What the CRM would have recorded for this mailbox: the owner's first mail of each
    conversation it started (the CRM sent those through the inbox). Replies to them in INBOX
    are what the processor turns into engagements; every other thread stays metadata only."""
    events = []
    for mail in mails:
        if mail.folder != "Sent" or mail.message_id is None or ".m0." not in mail.message_id:
            continue
        parsed = BytesParser(policy=policy.default).parsebytes(mail.raw, headersonly=True)
        to = getaddresses([str(parsed.get("To", ""))])
        name, email = to[0] if to else ("", "")
        message_id = mail.message_id  # bare, as producers/parse.py and send.py keep them
        events.append(
            OutboundEvent(
                event_id=hashlib.sha256(f"outbound\0{message_id}".encode()).hexdigest()[:32],
                message_id=message_id,
                kind="sent",
                inbox_id=inbox_id,
                contact_email=email or None,
                contact_name=name or None,
                subject=str(parsed.get("Subject", "")) or None,
                crm_ref=f"demo-{mail.thread}",
                sent_at=parsedate_to_datetime(str(parsed["Date"])),
            )
        )
    return events


async def publish_crm_outbound(settings: Settings, events: Iterable[OutboundEvent]) -> int:
    """Publish the CRM's records the way send/sender.py does (key = Message-ID)."""
    await ensure_topics(settings.kafka, settings.topics, [settings.topics.crm_outbound])
    serde = serde_for(OutboundEvent)
    producer = make_producer(settings.kafka)
    await producer.start()
    n = 0
    try:
        for event in events:
            await producer.send(
                settings.topics.crm_outbound.name,
                value=serde.encode(event),
                key=event.message_id.encode(),
                headers=serde.headers("outbound.sent"),
            )
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n

"""People (Dovecot users with a look into their mailbox) and topic reading for the send tests."""

from __future__ import annotations

import asyncio
import imaplib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord

from inboxstream.app.demo import demo_inbox, imap_client
from inboxstream.core.kafka import make_consumer
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.infra import dovecot, postfix


@dataclass(frozen=True)
class Person:
    """A Dovecot user for one test, with helpers to look into their mailbox."""

    name: str
    password: str = field(repr=False)

    def inbox(self, *, security: str = "starttls") -> InboxSettings:
        ep = postfix.endpoints()
        port = ep.submission_port if security == "starttls" else ep.smtps_port
        return demo_inbox(self.password, self.name).model_copy(
            update={"smtp_host": ep.tls_hostname, "smtp_port": port, "smtp_security": security}
        )

    def client(self) -> imaplib.IMAP4_SSL:
        return imap_client(self.name, self.password)

    def messages(self, folder: str) -> list[bytes]:
        """Every message of ``folder`` (full RFC 822 bytes), in UID order."""
        client = self.client()
        try:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            assert typ == "OK", f"cannot select {folder!r}"
            _, data = client.uid("SEARCH", "ALL")
            uids = data[0].split()
            out = []
            for uid in uids:
                _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
                out.append(next(p[1] for p in parts if isinstance(p, tuple)))
            return out
        finally:
            client.logout()

    def folders(self) -> list[str]:
        client = self.client()
        try:
            _, data = client.list()
            return [
                line.decode().rsplit(' "/" ', 1)[1].strip('"')
                for line in data
                if isinstance(line, bytes) and line
            ]
        finally:
            client.logout()

    def wait_for(self, folder: str, count: int, timeout: float = 30) -> list[bytes]:
        """Delivery through Postfix's queue is asynchronous: wait until ``count`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(folder)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def make_person(name: str, **kwargs: Any) -> Person:
    person = Person(name, secrets.token_urlsafe(12))
    dovecot.add_user(person.name, person.password, **kwargs)
    return person


async def read_topic(
    settings: Settings, topic: str, expect: int, timeout: float = 20
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start until ``expect`` records (or the deadline)."""
    consumer = make_consumer(settings.kafka, topic, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records

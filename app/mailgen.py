"""Deterministic realistic mail for the demo, the benchmarks and the tests.

Conversations between a mailbox owner and contacts at several companies: first messages,
replies and replies-to-replies with proper In-Reply-To/References, HTML alternatives,
attachments, non-ASCII names and subjects, and a few broken messages (no Message-ID, unknown
charset, bad date) because real mailboxes have them. The same seed gives the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

COMPANIES = [
    ("acme.example", "Acme"),
    ("globex.example", "Globex"),
    ("initech.example", "Initech"),
    ("umbrella.example", "Umbrella"),
    ("müller-gmbh.example", "Müller GmbH"),
    ("stark.example", "Stark Industries"),
]
FIRST = ["Ana", "Björn", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiro", "Inés", "José"]
LAST = ["Silva", "Løkke", "Dubois", "Ivanov", "Okafor", "Haddad", "Hopper", "Tanaka", "Núñez"]
TOPICS = [
    "Renewal quote for 2027",
    "Intro call next week?",
    "Invoice #{n} overdue",
    "Pilot results",
    "Contract redlines",
    "Kick-off agenda",
    "Preise und Konditionen",
    "Question about the API limits",
    "Onboarding checklist",
    "Security questionnaire",
]


@dataclass(frozen=True)
class GeneratedMail:
    raw: bytes
    folder: str  # "INBOX" or "Sent"
    message_id: str | None
    thread: int


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    domain, _ = rng.choice(COMPANIES)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode() or "contact"
    return f"{first} {last}", f"{local}@{domain.encode('idna').decode()}"


def generate_mailbox(
    owner: str, *, threads: int = 60, seed: int = 7, start: datetime | None = None
) -> Iterator[GeneratedMail]:
    """Yield messages in arrival order: received mail goes to INBOX, the owner's to Sent."""
    rng = random.Random(seed)
    clock = start or datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    owner_name = "Demo Owner"
    for t in range(threads):
        contact_name, contact = _person(rng)
        company = dict(COMPANIES)[contact.split("@")[1].encode().decode("idna")]
        # The company in the subject, as CRM mail has it: RFC 5256 merges conversations whose
        # base subjects are equal, so ten bare topics would fold unrelated threads together.
        subject = f"{rng.choice(TOPICS).format(n=1000 + t)} – {company}"
        ids: list[str] = []
        inbound_first = rng.random() < 0.6
        for depth in range(rng.randint(1, 6)):
            clock += timedelta(minutes=rng.randint(3, 600))
            inbound = (depth % 2 == 0) == inbound_first
            msg = EmailMessage()
            sender = (contact_name, contact) if inbound else (owner_name, owner)
            rcpt = (owner_name, owner) if inbound else (contact_name, contact)
            msg["From"] = formataddr(sender)
            msg["To"] = formataddr(rcpt)
            if rng.random() < 0.2:
                msg["Cc"] = formataddr(_person(rng))
            msg["Subject"] = ("Re: " if depth else "") + subject
            msg["Date"] = format_datetime(clock)
            mid = f"t{t}.m{depth}.{seed}@{contact.split('@')[1] if inbound else 'demo.example'}"
            msg["Message-ID"] = f"<{mid}>"
            if ids:
                msg["In-Reply-To"] = f"<{ids[-1]}>"
                msg["References"] = " ".join(f"<{i}>" for i in ids)
            ids.append(mid)
            text = (
                f"Hi {rcpt[0].split()[0]},\n\n"
                f"{rng.choice(['Following up on', 'Thanks for', 'About'])} {subject.lower()}.\n"
                f"{'Grüße' if rng.random() < 0.2 else 'Best'},\n{sender[0]}\n"
            )
            msg.set_content(text)
            if rng.random() < 0.4:
                msg.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
            if rng.random() < 0.15:
                payload = rng.randbytes(rng.randint(2_000, 40_000))
                msg.add_attachment(
                    payload,
                    maintype="application",
                    subtype="pdf",
                    filename=f"document-{t}-{depth}.pdf",
                )
            yield GeneratedMail(msg.as_bytes(), "INBOX" if inbound else "Sent", mid, t)
    # Broken mail every real mailbox has: no Message-ID, unknown charset, junk date.
    yield GeneratedMail(
        b"From: noreply@broken.example\r\nTo: " + owner.encode() + b"\r\n"
        b"Subject: no message id here\r\nDate: not a date\r\n\r\nbody\r\n",
        "INBOX",
        None,
        -1,
    )
    yield GeneratedMail(
        b"From: =?x-unknown?q?Str=E4nge?= <odd@weird.example>\r\nTo: " + owner.encode() + b"\r\n"
        b"Message-ID: <charset-test@weird.example>\r\nSubject: =?x-unknown?q?Gr=FC=DFe?=\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nGr\xfc\xdfe\r\n",
        "INBOX",
        "charset-test@weird.example",
        -2,
    )

"""End to end (issue 6's last item): the CRM sends through Alice's inbox (Postfix), Bob replies
into Alice's INBOX, Alice's mailbox is synced over IMAP, and the processor turns the reply into
a ``crm.engagements`` event with how it matched, the body text and the attachment."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid

from inboxstream.app.pipeline import sync_inbox_once
from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.processors.topology import ProcessorTopics
from inboxstream.schemas.models import EngagementEvent, MessageEvent
from inboxstream.send.sender import Draft, MailSender
from tests.helpers.pipeline import assignments, read_all
from tests.helpers.send import Person


async def test_reply_to_crm_mail_becomes_an_engagement(
    settings: Settings,
    people: Callable[..., Person],
    mail_sender: MailSender,
    unique: str,
) -> None:
    alice, bob = people("alice"), people("bob")
    sent = await mail_sender.send(
        alice.inbox(),
        Draft(to=[f"Bob Buyer <{bob.name}>"], subject="Your quote", text="Here is the quote."),
        crm_ref="deal-42",
        idempotency_key=f"quote-{unique}",
    )
    assert bob.wait_for("INBOX", 1), "the CRM mail never reached Bob"

    reply = EmailMessage()
    reply["From"] = f"Bob Buyer <{bob.name}>"
    reply["To"] = alice.name
    reply["Subject"] = "Re: Your quote"
    reply["Message-ID"] = make_msgid(domain="buyer.test")
    reply["In-Reply-To"] = f"<{sent.message_id}>"
    reply["References"] = f"<{sent.message_id}>"
    reply.set_content("Looks good, let's sign on Monday.")
    reply.add_attachment(
        b"%PDF-1.4 signed", maintype="application", subtype="pdf", filename="po.pdf"
    )
    dovecot.deliver(alice.name, bytes(reply), sender=bob.name)
    # a private mail in the same inbox: its body must not come out
    private = EmailMessage()
    private["From"] = "friend@example.test"
    private["To"] = alice.name
    private["Subject"] = "Re: dinner"
    private["Message-ID"] = make_msgid(domain="friend.test")
    private["In-Reply-To"] = "<dinner@friend.test>"
    private.set_content("PRIVATE-DINNER-TEXT")
    dovecot.deliver(alice.name, bytes(private))
    # Bob's out-of-office answer and a bounce both refer to the CRM mail, and neither is a
    # reply: marked on their events, threaded, never engagements (so never in the reply rate).
    away = EmailMessage()
    away["From"] = f"Bob Buyer <{bob.name}>"
    away["To"] = alice.name
    away["Subject"] = "Automatic reply: Your quote"
    away["Message-ID"] = make_msgid(domain="buyer.test")
    away["In-Reply-To"] = f"<{sent.message_id}>"
    away["Auto-Submitted"] = "auto-replied"
    away.set_content("I am out of the office until Monday.")
    dovecot.deliver(alice.name, bytes(away), sender=bob.name)
    bounce_id = make_msgid(domain="buyer.test")
    bounce = (  # RFC 3464: a multipart/report with a message/delivery-status part
        f"From: MAILER-DAEMON@buyer.test\r\nTo: {alice.name}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {bounce_id}\r\n"
        f"References: <{sent.message_id}>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; buyer.test\r\n\r\nFinal-Recipient: rfc822; gone@buyer.test\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n\r\n--b1--\r\n"
    ).encode()
    dovecot.deliver(alice.name, bounce)

    await sync_inbox_once(settings, alice.inbox())
    await run_processor(settings, ProcessorConfig(group_id=f"e2e-{unique}"), until_end=True)

    topics = ProcessorTopics.build(settings.topics)
    engagements = await read_all(settings, topics.engagements, EngagementEvent)
    assert len(engagements) == 1
    eng = engagements[0]
    assert eng.event_type == "engagement.created"
    assert eng.message_id == reply["Message-ID"].strip("<>")
    assert eng.crm_message_id == sent.message_id
    assert eng.matched_by == "in_reply_to"
    assert eng.crm_ref == "deal-42" and eng.inbox_id == alice.name
    assert (eng.contact_email, eng.contact_name) == (bob.name, "Bob Buyer")
    assert eng.subject == "Re: Your quote"
    assert eng.body_text and "sign on Monday" in eng.body_text
    assert [a.filename for a in eng.attachments] == ["po.pdf"]
    assert "PRIVATE-DINNER-TEXT" not in repr(engagements)
    # the reply shares the thread of the CRM mail's copy in Alice's Sent folder
    synced = await read_all(settings, settings.topics.messages.name, MessageEvent)
    sent_copy = next(m for m in synced if m.message_id == sent.message_id)
    assert sent_copy.folder_role == "sent"
    threads = await assignments(settings)
    assert threads[sent_copy.event_id] == eng.thread_id
    automated = {m.subject: m for m in synced if m.automated}
    assert {s: m.automated for s, m in automated.items()} == {
        "Automatic reply: Your quote": "auto_reply",
        "Undelivered Mail Returned to Sender": "bounce",
    }
    assert all(threads[m.event_id] == eng.thread_id for m in automated.values())
    assert not [m for m in synced if m.automated and m.subject and m.subject.startswith("Re:")]

"""Our threading against a real implementation: Dovecot's ``THREAD=REFERENCES``.

A generated mailbox of tricky cases (missing and late parents, a cycle, a duplicated
Message-ID, Re:/Fwd:/[tag]/(fwd) and encoded-word subjects, no Message-ID, malformed and
self references, empty subjects) is APPENDed to a fresh Dovecot user over TLS. The grouping
Dovecot returns for ``UID THREAD REFERENCES UTF-8 ALL`` must equal the offline command's and
the stream processor's (after a real sync of that mailbox into Kafka).

The one difference we know of is kept out of the mailbox on purpose and documented in the
README: an id without angle brackets (``References: x1@example``, ``In-Reply-To: x1@example``).
Dovecot ignores it; we take bare ``local@domain`` tokens when a header has no bracketed id at all
(lenient parsing, ``producers.parse.parse_msg_ids``), so such a reply joins its parent with us
and stays alone in Dovecot (checked by hand: Dovecot answers ``(1)(2)``, we ``(1 2)``). Malformed
headers that still contain a bracketed id (``junk <i1@...> <broken``) agree and are in the box.
Duplicate Message-IDs agree too: both give the id to the first message in mailbox order, even
when a later copy carries an earlier Date.
"""

from __future__ import annotations

import imaplib
import re
from pathlib import Path

from inboxstream.app.demo import imap_client
from inboxstream.app.pipeline import sync_inbox_once
from inboxstream.core.settings import Settings
from inboxstream.processors.mbox import thread_mbox
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.schemas.models import MessageEvent
from tests.helpers.mailboxes import to_mbox, tricky_mailbox
from tests.helpers.pipeline import assignments, read_all
from tests.helpers.services import MailUser


def parse_thread_response(data: bytes) -> list[set[int]]:
    """Top-level threads of a THREAD response, each as the set of its UIDs."""
    groups: list[set[int]] = []
    depth = 0
    for token in re.findall(rb"\(|\)|\d+", data):
        if token == b"(":
            if depth == 0:
                groups.append(set())
            depth += 1
        elif token == b")":
            depth -= 1
        else:
            groups[-1].add(int(token))
    assert depth == 0, data
    return groups


def as_labels(groups: list[set[int]], labels: dict[int, str]) -> set[frozenset[str]]:
    return {frozenset(labels[k] for k in g) for g in groups}


async def test_offline_stream_and_dovecot_agree(
    settings: Settings, mail_user: MailUser, unique: str, tmp_path: Path
) -> None:
    mails, expected, _ = tricky_mailbox()
    client = imap_client(mail_user.name, mail_user.password)
    try:
        for mail in mails:
            when = imaplib.Time2Internaldate(mail.date.timestamp())
            typ, _ = client.append("INBOX", None, when, mail.raw)
            assert typ == "OK"
        client.select("INBOX", readonly=True)
        _, uid_data = client.uid("SEARCH", "ALL")
        uids = [int(u) for u in uid_data[0].split()]
        typ, data = client.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
        assert typ == "OK"
    finally:
        client.logout()
    assert len(uids) == len(mails)
    by_uid = {uid: mails[i].label for i, uid in enumerate(uids)}  # UIDs follow APPEND order
    dovecot = as_labels(parse_thread_response(data[0]), by_uid)
    want = {frozenset(g) for g in expected}
    assert dovecot == want

    mbox = tmp_path / "tricky.mbox"
    mbox.write_bytes(to_mbox([m.raw for m in mails]))
    offline = {frozenset(mails[m["index"]].label for m in t["messages"]) for t in thread_mbox(mbox)}
    assert offline == dovecot

    inbox = mail_user.inbox()
    await sync_inbox_once(settings, inbox)
    await run_processor(settings, ProcessorConfig(group_id=f"agree-{unique}"), until_end=True)
    synced = await read_all(settings, settings.topics.messages.name, MessageEvent)
    uid_of = {m.event_id: m.uid for m in synced if m.folder == "INBOX"}
    by_thread: dict[str, set[int]] = {}
    for event_id, thread_id in (await assignments(settings)).items():
        if event_id in uid_of:
            by_thread.setdefault(thread_id, set()).add(uid_of[event_id])
    assert as_labels(list(by_thread.values()), by_uid) == dovecot

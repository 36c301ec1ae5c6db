"""The hostile corpus in a real mailbox: APPENDed to Dovecot, synced over IMAP, threaded by
the stream processor, projected by the sink. Every message Dovecot stored is a row in
``email_metadata`` and has its thread in ``threads``; nothing is dead-lettered."""

from __future__ import annotations

from inboxstream.app.demo import imap_client
from inboxstream.app.pipeline import open_clickhouse, run_sink, sync_inbox_once
from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, run_processor
from tests.helpers.hostile import hostile_corpus
from tests.helpers.services import MailUser


async def test_a_hostile_mailbox_is_threaded_and_projected_whole(
    settings: Settings, mail_user: MailUser, unique: str
) -> None:
    corpus = [raw for raw in hostile_corpus() if raw]  # IMAP cannot APPEND an empty message
    client = imap_client(mail_user.name, mail_user.password)
    try:
        for raw in corpus:
            typ, detail = client.append("INBOX", None, None, raw)
            assert typ == "OK", detail
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", "ALL")
        stored = len(data[0].split())
    finally:
        client.logout()
    assert stored == len(corpus)

    report = await sync_inbox_once(settings, mail_user.inbox())
    assert report.folders["INBOX"].published == stored
    stats = await run_processor(
        settings, ProcessorConfig(group_id=f"hostile-{unique}"), until_end=True
    )
    assert stats.dead_lettered == 0
    ch = open_clickhouse(settings)
    sink = await run_sink(settings, ch, until_caught_up=True, timeout=120)
    assert sink.stats.dead_lettered == 0

    db = ch.database
    rows = ch.query(
        f"SELECT count() AS n, uniqExact(uid) AS uids, countIf(parse_error != '') AS errors "
        f"FROM {db}.email_metadata FINAL WHERE folder = 'INBOX'"
    )
    assert int(rows[0]["n"]) == stored and int(rows[0]["uids"]) == stored
    assert int(rows[0]["errors"]) >= 4  # the caps and fallbacks say what they left out
    unthreaded = ch.query(
        f"SELECT count() AS n FROM {db}.email_metadata FINAL WHERE folder = 'INBOX' "
        f"AND event_id NOT IN (SELECT message_event_id FROM {db}.threads "
        f"WHERE event_type = 'thread.assigned')"
    )
    assert int(unthreaded[0]["n"]) == 0
    chain = ch.query(
        f"SELECT uniqExact(thread_id) AS threads FROM {db}.threads "
        f"WHERE message_id LIKE 'chain-%' AND event_type = 'thread.assigned'"
    )
    assert int(chain[0]["threads"]) == 1  # the 100-deep reply chain is one conversation

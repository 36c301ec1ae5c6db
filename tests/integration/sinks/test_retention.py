"""Retention, proven on the engine: events dated 1, 8 and 61 days ago (and deletes 10 and 91
days ago) go through Kafka and the sink, then the TTL merge and the engagement purge run.

Rules (the provider's FAQ): bodies 7 days; metadata 60 days; engagements until deleted, then
purged within 90 days; sequence emails indefinitely."""

from __future__ import annotations

from inboxstream.app.pipeline import open_clickhouse, run_sink
from inboxstream.core.settings import Settings
from inboxstream.sinks.clickhouse import ClickHouse
from inboxstream.sinks.retention import enforce_retention
from tests.helpers import events as ev

AGES = (1, 8, 61)


def _kept(ch: ClickHouse, table: str, column: str) -> list[int]:
    """Which of the dated rows are still there, as their uid / age marker."""
    rows = ch.query(f"SELECT {column} AS k FROM {ch.database}.{table} FINAL ORDER BY k")
    return [int(r["k"]) for r in rows]


async def test_ttls_and_the_engagement_purge(settings: Settings, unique: str) -> None:
    inbox = f"r-{unique}@example.test"
    t = settings.topics
    # uid = age in days, so what survives reads as the ages that survive
    await ev.produce(
        settings, t.messages.name, [ev.message(inbox, d, received=ev.ago(days=d)) for d in AGES]
    )
    await ev.produce(
        settings, t.bodies.name, [ev.body(inbox, d, received=ev.ago(days=d)) for d in AGES]
    )
    await ev.produce(
        settings, t.threads.name, [ev.assigned(inbox, d, f"T{d}", ev.ago(days=d)) for d in AGES]
    )
    await ev.produce(
        settings,
        t.status.name,
        [ev.status(inbox, "idle", ev.ago(days=d), reason=str(d)) for d in AGES],
    )
    await ev.produce(
        settings,
        t.engagements.name,
        [
            # never deleted: kept however old; its body expired, so the text goes
            ev.engagement("live", inbox, "crm-a", ev.ago(days=61)),
            ev.engagement("live", inbox, "crm-a", ev.ago(days=54), event_type="body.expired"),
            # deleted 91 days ago: past its 90 days, every row of it must go
            ev.engagement("gone", inbox, "crm-b", ev.ago(days=120)),
            ev.engagement("gone", inbox, "crm-b", ev.ago(days=91), event_type="engagement.deleted"),
            # deleted 10 days ago: may stay up to 90 days (kept, marked deleted)
            ev.engagement("recent", inbox, "crm-c", ev.ago(days=61)),
            ev.engagement(
                "recent", inbox, "crm-c", ev.ago(days=10), event_type="engagement.deleted"
            ),
            # a reply to sequence mail, deleted 91 days ago: sequence mail is kept indefinitely
            ev.engagement("seq", inbox, "crm-s", ev.ago(days=200), crm_kind="sequence"),
            # the delete event does not repeat the kind: the created row's "sequence" counts
            ev.engagement("seq", inbox, "crm-s", ev.ago(days=91), event_type="engagement.deleted"),
            # only a delete is left (its created event fell off the topic): purged all the same
            ev.engagement(
                "orphan", inbox, "crm-o", ev.ago(days=91), event_type="engagement.deleted"
            ),
        ],
    )
    await ev.produce(
        settings,
        t.crm_outbound.name,
        [
            ev.outbound("crm-s", ev.ago(days=400), kind="sequence"),
            ev.outbound("crm-b", ev.ago(days=120)),
        ],
    )
    ch = open_clickhouse(settings)
    await run_sink(settings, ch, until_caught_up=True, timeout=60)
    engagement_rows = (
        f"SELECT engagement_id, count() AS n FROM {ch.database}.engagements FINAL "
        "GROUP BY engagement_id ORDER BY engagement_id"
    )
    assert len(ch.query(engagement_rows)) == 5  # everything landed before retention runs

    purged = enforce_retention(ch)

    assert purged == 2  # 'gone' and 'orphan'
    assert _kept(ch, "bodies", "uid") == [1]  # 7 days
    assert _kept(ch, "email_metadata", "uid") == [1, 8]  # 60 days
    assert _kept(ch, "threads", "toUInt32(substring(thread_id, 2))") == [1, 8]
    assert _kept(ch, "inbox_status", "toUInt32(reason)") == [1, 8]
    assert [(r["engagement_id"], int(r["n"])) for r in ch.query(engagement_rows)] == [
        ("live", 2),
        ("recent", 2),
        ("seq", 2),
    ]
    current = ch.query(
        f"SELECT engagement_id, is_deleted FROM {ch.database}.engagements_current "
        "ORDER BY engagement_id"
    )
    assert [(r["engagement_id"], bool(r["is_deleted"])) for r in current] == [
        ("live", False),
        ("recent", True),
        ("seq", True),
    ]
    bodies = ch.query(
        f"SELECT engagement_id, countIf(body_text IS NOT NULL) AS with_body "
        f"FROM {ch.database}.engagements FINAL GROUP BY engagement_id ORDER BY engagement_id"
    )
    assert [(r["engagement_id"], int(r["with_body"])) for r in bodies] == [
        ("live", 0),  # cleared on disk, not only hidden by the view
        ("recent", 1),
        ("seq", 1),
    ]
    # the CRM's own mail has no age limit (sequence mail indefinitely); whole days elapsed,
    # not calendar days crossed (the events are dated when the run began, maybe before midnight)
    age_days = "intDiv(dateDiff('second', sent_at, now()), 86400)"
    assert _kept(ch, "crm_outbound", age_days) == [120, 400]
    # and a second run finds nothing more to purge
    assert enforce_retention(ch) == 0

"""Retention that a row-level TTL cannot express, and a way to apply the TTLs now.

Bodies (7 days), metadata and threads (60 days) and inbox status (60 days) expire by TTL in
their DDL. A deleted engagement must go 90 days after its delete, with every row of it at once;
a TTL only sees one row, so the purge here deletes by engagement id (see 0002_projections.sql).
Engagements replying to sequence mail are kept indefinitely.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from inboxstream.core.contracts import DELETED_ENGAGEMENT_PURGE_DAYS
from inboxstream.sinks.clickhouse import ClickHouse

log = logging.getLogger(__name__)

ENGAGEMENT_PURGE_AFTER = timedelta(days=DELETED_ENGAGEMENT_PURGE_DAYS)
TTL_TABLES = ("email_metadata", "bodies", "threads", "inbox_status")
_CHUNK = 500


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _mutate_engagements(ch: ClickHouse, action: str, ids: list[str]) -> None:
    """``ALTER TABLE engagements <action>`` for these engagement ids, a chunk at a time.
    mutations_sync=2 waits until the mutation is done, so "purged" means purged."""
    for start in range(0, len(ids), _CHUNK):
        chunk = ", ".join(_quote(i) for i in ids[start : start + _CHUNK])
        ch.command(
            f"ALTER TABLE {ch.database}.engagements {action} "
            f"WHERE engagement_id IN ({chunk}) SETTINGS mutations_sync = 2"
        )


def purge_deleted_engagements(ch: ClickHouse, now: datetime | None = None) -> int:
    """Delete every row of engagements deleted more than 90 days ago (sequence mail excepted);
    return how many engagements were purged."""
    cutoff = (now or datetime.now(UTC)) - ENGAGEMENT_PURGE_AFTER
    # From the event rows, not the engagements_current view: an engagement whose "created"
    # event is gone (say, a topic replayed from a later offset) must still be purged. Any row
    # saying "sequence" keeps it: a delete event may not repeat the engagement's kind.
    rows = ch.query(
        f"SELECT engagement_id FROM {ch.database}.engagements FINAL "
        "GROUP BY engagement_id "
        "HAVING countIf(event_type = 'engagement.deleted') > 0 "
        "AND countIf(crm_kind = 'sequence') = 0 "
        f"AND maxIf(occurred_at, event_type = 'engagement.deleted') "
        f"< toDateTime64('{_ts(cutoff)}', 3, 'UTC')"
    )
    ids = [str(r["engagement_id"]) for r in rows]
    _mutate_engagements(ch, "DELETE", ids)
    if ids:
        log.info("purged %d engagements deleted before %s", len(ids), _ts(cutoff))
    return len(ids)


def drop_expired_bodies(ch: ClickHouse) -> int:
    """Physically clear ``body_text`` of engagements that got a ``body.expired`` event (the
    engagements_current view already hides it); return how many engagements were cleared."""
    rows = ch.query(
        f"SELECT DISTINCT engagement_id FROM {ch.database}.engagements "
        "WHERE event_type = 'body.expired' AND engagement_id IN ("
        f"SELECT engagement_id FROM {ch.database}.engagements WHERE body_text IS NOT NULL)"
    )
    ids = [str(r["engagement_id"]) for r in rows]
    _mutate_engagements(ch, "UPDATE body_text = NULL", ids)
    return len(ids)


def apply_ttl(ch: ClickHouse) -> None:
    """Merge now, so expired rows go now rather than at the next background TTL merge.
    OPTIMIZE ... FINAL rewrites every partition: an operator action, not a hot-path one."""
    for table in TTL_TABLES:
        ch.command(f"OPTIMIZE TABLE {ch.database}.{table} FINAL")


def enforce_retention(ch: ClickHouse, now: datetime | None = None) -> int:
    """Purge deleted engagements, clear expired engagement bodies, then apply the TTLs;
    return the engagements purged."""
    purged = purge_deleted_engagements(ch, now)
    drop_expired_bodies(ch)
    apply_ttl(ch)
    return purged

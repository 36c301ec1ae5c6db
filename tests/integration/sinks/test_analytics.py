"""Known events through Kafka and the sink, then every named analytics query, figure by figure.
Everything is produced twice: a replay must not move a single figure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from inboxstream.app.pipeline import open_clickhouse, run_sink
from inboxstream.core.settings import Settings
from inboxstream.sinks import analytics
from inboxstream.sinks.clickhouse import ClickHouse
from tests.helpers import events as ev


async def _load(settings: Settings, a: str, b: str, c: str) -> None:
    t = settings.topics
    d1, d2, d3 = ev.ago(days=1), ev.ago(days=2), ev.ago(days=3)

    def m(inbox: str, uid: int, day: Any, sender: str, lag_s: int, role: str = "inbox") -> Any:
        return ev.message(
            inbox,
            uid,
            received=day,
            sender=sender,
            role=role,
            observed=day + timedelta(seconds=lag_s),
        )

    messages = [
        m(a, 1, d1, "ann@acme.example", 10),
        m(a, 2, d1, "ann@ACME.example", 20),
        m(a, 3, d1, "bob@globex.example", 30),
        m(a, 4, d1, a, 40, role="sent"),
        m(a, 5, d2, "carl@acme.example", 50),
        m(b, 1, d1, "dan@globex.example", 5),
    ]
    threads = [
        ev.assigned(a, 1, "T1", d1),
        ev.assigned(a, 2, "T1", d1),
        ev.assigned(a, 3, "T1", d1),
        ev.assigned(a, 4, "T2", d1),
        ev.assigned(a, 5, "T3", d2),
        ev.merged(a, "T3", ["T2"], d1),  # first T2 folds into T3 ...
        ev.merged(a, "T1", ["T3"], d1 + timedelta(minutes=1)),  # ... then T3 into T1
        ev.assigned(b, 1, "T9", d1),
    ]
    outbound = [
        ev.outbound("crm1", d3),
        ev.outbound("crm2", d3),
        ev.outbound("crm3", d3, kind="sequence"),
        ev.outbound("crm4", d3, kind="logged"),
    ]
    engagements = [
        ev.engagement("E1", a, "crm1", d3 + timedelta(hours=2)),
        ev.engagement("E2", a, "crm1", d3 + timedelta(hours=5)),  # a second reply
        ev.engagement("E3", a, "crm3", d3 + timedelta(hours=4), crm_kind="sequence"),
        ev.engagement("E4", a, "crm2", d3 + timedelta(hours=1)),
        ev.engagement("E4", a, "crm2", d2, event_type="engagement.deleted"),
    ]
    status = [
        ev.status(a, "connected", d3),
        ev.status(a, "disconnected", d2, "The password was changed", "auth"),
        ev.status(a, "connected", d1),
        ev.status(b, "connected", d2),
        ev.status(b, "disconnected", ev.ago(hours=1), "certificate name mismatch", "tls"),
        ev.status(c, "disconnected", d2, "timed out", "timeout"),
        ev.status(c, "disconnected", d1, "access was revoked", "auth"),
    ]
    for _ in range(2):
        await ev.produce(settings, t.messages.name, messages)
        await ev.produce(settings, t.threads.name, threads)
        await ev.produce(settings, t.crm_outbound.name, outbound)
        await ev.produce(settings, t.engagements.name, engagements)
        await ev.produce(settings, t.status.name, status)


def _figures(ch: ClickHouse, name: str, *columns: str) -> list[tuple[Any, ...]]:
    rows = analytics.run(ch, analytics.load_queries()[name])
    return [tuple(_plain(row[c]) for c in columns) for row in rows]


def _plain(value: Any) -> Any:
    """A server may quote 64-bit integers in JSON; compare numbers as numbers."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


async def test_every_named_query_gives_the_known_figures(settings: Settings, unique: str) -> None:
    a, b, c = (f"{x}-{unique}@example.test" for x in "abc")
    await _load(settings, a, b, c)
    ch = open_clickhouse(settings)
    await run_sink(settings, ch, until_caught_up=True, timeout=60)
    day1, day2 = str(ev.ago(days=1).date()), str(ev.ago(days=2).date())

    assert _figures(
        ch, "messages_per_inbox_per_day", "inbox_id", "day", "messages", "received", "sent"
    ) == [(a, day2, 1, 1, 0), (a, day1, 4, 3, 1), (b, day1, 1, 1, 0)]

    assert _figures(ch, "top_sender_domains", "from_domain", "messages", "inboxes") == [
        ("acme.example", 3, 1),
        ("globex.example", 2, 2),
    ]

    # T2 -> T3 -> T1: all five of a's messages are one conversation; b's is alone.
    assert _figures(ch, "thread_length_distribution", "messages_in_thread", "threads") == [
        (1, 1),
        (5, 1),
    ]

    # crm1: first reply after 2 h (the second reply does not count twice); crm2's only
    # engagement was deleted; crm3 (sequence) after 4 h; crm4 (logged) never answered.
    rate = _figures(ch, "crm_reply_rate", "crm_kind", "crm_mails", "replied", "reply_rate_pct")
    assert rate == [
        ("logged", 1, 0, 0.0),
        ("sent", 2, 1, 50.0),
        ("sequence", 1, 1, 100.0),
        ("all", 4, 2, 50.0),
    ]
    medians = dict(_figures(ch, "crm_reply_rate", "crm_kind", "median_reply_hours"))
    assert (medians["sent"], medians["sequence"], medians["all"]) == (2.0, 4.0, 3.0)

    lag = {
        row[0]: row[1:]
        for row in _figures(
            ch,
            "sync_lag_per_inbox",
            "inbox_id",
            "messages",
            "server_to_event_p50_s",
            "server_to_event_p95_s",
        )
    }
    assert lag == {a: (5, 30.0, 48.0), b: (1, 5.0, 5.0)}
    event_to_row = _figures(ch, "sync_lag_per_inbox", "event_to_row_p50_s")
    assert all(v[0] > 0 for v in event_to_row)  # rows land after their events

    assert _figures(
        ch, "disconnected_inboxes", "inbox_id", "last_reason", "last_error_kind", "disconnects"
    ) == [
        (b, "certificate name mismatch", "tls", 1),
        (c, "access was revoked", "auth", 2),
    ]


async def test_parquet_export_holds_the_table(settings: Settings, unique: str) -> None:
    import io

    import pyarrow.parquet as pq

    inbox = f"p-{unique}@example.test"
    await ev.produce(
        settings,
        settings.topics.messages.name,
        [ev.message(inbox, u, received=ev.ago(days=1)) for u in range(1, 4)] * 2,
    )
    ch = open_clickhouse(settings)
    await run_sink(settings, ch, until_caught_up=True, timeout=60)
    table = pq.read_table(io.BytesIO(analytics.export_parquet(ch, "email_metadata")))
    assert table.num_rows == 3  # read with FINAL: the replayed copies are not exported
    assert sorted(table.column("uid").to_pylist()) == [1, 2, 3]

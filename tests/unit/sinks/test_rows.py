"""Event -> row mappings: pure, so checked over generated events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.schemas.models import Attachment, BodyEvent, EngagementEvent, MessageEvent
from inboxstream.sinks.clickhouse import json_each_row
from inboxstream.sinks.rows import body_row, engagement_row, metadata_row, record_of

times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(observed=times, internal=st.none() | times, date=st.none() | times)
def test_the_retention_clock_starts_at_the_servers_date(
    observed: datetime, internal: datetime | None, date: datetime | None
) -> None:
    # The same message as both events: the fields they share.
    shared: dict[str, Any] = {
        "event_id": "e",
        "inbox_id": "i",
        "folder": "INBOX",
        "uidvalidity": 1,
        "uid": 1,
        "message_id": "m",
        "size": 1,
        "observed_at": observed,
        "internal_date": internal,
        "date": date,
    }
    msg = MessageEvent(**shared, raw_headers=b"")
    body = BodyEvent(**shared)
    expected = msg.internal_date or msg.date or msg.observed_at
    assert (
        metadata_row(record_of(msg))["received_at"]
        == expected
        == body_row(record_of(body))["received_at"]
    )
    # version is the event time in ms, so a later observation of the same event wins
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert metadata_row(record_of(msg))["version"] == (msg.observed_at - epoch) // timedelta(
        milliseconds=1
    )


@given(at=times, later=st.integers(min_value=1, max_value=10**9))
def test_a_later_lifecycle_event_has_a_higher_version(at: datetime, later: int) -> None:
    def e(kind: str, when: datetime) -> EngagementEvent:
        return EngagementEvent(
            event_id=kind,
            event_type=kind,
            engagement_id="g",
            inbox_id="i",
            message_id="m",
            crm_message_id="c",
            occurred_at=when,
        )

    created = engagement_row(record_of(e("engagement.created", at)))
    deleted = engagement_row(record_of(e("engagement.deleted", at + timedelta(milliseconds=later))))
    assert deleted["version"] > created["version"]
    assert created["engagement_id"] == deleted["engagement_id"]


def test_attachments_become_parallel_arrays() -> None:
    body = BodyEvent(
        event_id="e",
        inbox_id="i",
        folder="INBOX",
        uidvalidity=1,
        uid=1,
        message_id="m",
        size=1,
        observed_at=datetime(2026, 1, 1, tzinfo=UTC),
        attachments=[
            Attachment(filename="a.pdf", content_type="application/pdf", size=3, sha256="x"),
            Attachment(content_type="image/png", size=5, sha256="y"),
        ],
    )
    row = body_row(record_of(body))
    assert row["attachment_filenames"] == ["a.pdf", ""]
    assert row["attachment_sizes"] == [3, 5]


@given(
    st.lists(
        st.fixed_dictionaries(
            {"s": st.text(), "n": st.integers(min_value=0, max_value=2**63), "t": times}
        ),
        max_size=5,
    )
)
def test_json_each_row_is_one_parseable_line_per_row(rows: list[dict[str, object]]) -> None:
    # ClickHouse splits rows on "\n" only; U+0085 or U+2028 inside a string must not split
    lines = json_each_row(rows).decode().split("\n")[:-1]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        parsed = json.loads(line)
        assert parsed["s"] == row["s"] and parsed["n"] == row["n"]
        # DateTime64(3) text, millisecond precision
        assert parsed["t"] == row["t"].strftime("%Y-%m-%d %H:%M:%S.") + (  # type: ignore[attr-defined]
            f"{row['t'].microsecond // 1000:03d}"  # type: ignore[attr-defined]
        )


def test_a_model_maps_as_the_record_the_sink_decodes() -> None:
    """The sink maps the Avro reader's dicts; tests and tools map models through record_of:
    both must be the same dict, so both give the same rows."""
    from inboxstream.app.mailgen import generate_mailbox
    from inboxstream.producers.parse import FetchedMessage, parse_message
    from inboxstream.schemas.serde import serde_for

    for i, mail in enumerate(generate_mailbox("o@x.test", threads=40)):
        fetched = FetchedMessage(
            "o@x.test", "INBOX", "inbox", 1, i + 1, mail.raw, flags=("\\Seen",)
        )
        for event in parse_message(fetched):
            serde = serde_for(type(event))
            decoded = serde.decode_record(serde.encode(event), serde.headers())
            assert decoded == record_of(event)

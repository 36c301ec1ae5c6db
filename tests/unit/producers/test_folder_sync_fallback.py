"""A message whose event cannot be Avro-encoded is published as its identity plus the reason,
so one bad field never wedges a folder's backfill."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inboxstream.producers.encode import identity_only
from inboxstream.schemas.exceptions import EncodeError
from inboxstream.schemas.models import MessageEvent
from inboxstream.schemas.serde import serde_for


def test_unencodable_event_falls_back_to_its_identity() -> None:
    bad = MessageEvent(
        event_id="e1",
        inbox_id="a@b.c",
        folder="INBOX",
        folder_role="inbox",
        uidvalidity=7,
        uid=42,
        message_id="id-\udcff@x",  # a lone surrogate, as surrogateescape decoding leaves
        subject="caf\udce9",
        size=10,
        raw_headers=b"Subject: caf\xe9\r\n",
        observed_at=datetime(2026, 11, 23, tzinfo=UTC),
    )
    serde = serde_for(MessageEvent)
    with pytest.raises(EncodeError):
        serde.encode(bad)
    fallback = identity_only(bad, EncodeError("boom"))
    decoded = serde.decode(serde.encode(fallback), serde.headers())
    assert (decoded.event_id, decoded.uid, decoded.uidvalidity) == ("e1", 42, 7)
    assert decoded.subject is None and decoded.message_id == "id-?@x"
    assert decoded.parse_error is not None and "boom" in decoded.parse_error

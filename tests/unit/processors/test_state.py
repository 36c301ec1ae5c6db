"""Processor state: what is written to the changelog restores to the same state."""

from __future__ import annotations

from inboxstream.processors.assign import MessageEntry
from inboxstream.processors.state import PartitionState


def test_changelog_round_trip_and_pending_index() -> None:
    live = PartitionState(0)
    entry = MessageEntry(5, "e1", "m1@x", ["crm@x"], ["crm@x"], "Re: hi", None, 1000)
    events, changed = live.inbox("i").add(entry)
    for e in changed:
        live.record_message("i", e)
    held = {"reply": {"in_reply_to": ["crm@x"], "references": ["a@x", "crm@x"]}, "match": None}
    live.put("pending", "i\x00e1", held)
    live.put("crm", "crm@x", {"kind": "sent"})
    live.put("pending", "i\x00gone", {"body_at": 3, "since_ms": 0})
    live.put("pending", "i\x00gone", None)
    live.advance(1000)
    assert live.pending_mentioning("crm@x") == ["i\x00e1"]

    restored = PartitionState(0)
    for (store, key), value in live.take_changes().items():
        restored.apply(store, key, value)
    assert restored.pending == live.pending and restored.crm == live.crm
    assert restored.watermark_ms == 1000
    assert restored.inbox("i").entries["e1"].thread_id == entry.thread_id is not None
    assert restored.pending_mentioning("a@x") == ["i\x00e1"]
    assert live.take_changes() == {}  # taken once

    restored.put("pending", "i\x00e1", None)
    assert restored.pending_mentioning("crm@x") == []
    assert len(events) == 1 and events[0].event_type == "thread.assigned"

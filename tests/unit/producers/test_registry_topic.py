"""The registry topic's records and placement (producers/registry_topic.py), without Kafka."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from inboxstream.core.settings import InboxSettings
from inboxstream.core.vault import SecretBox
from inboxstream.producers.registry_topic import RegistryView, decode_entry, encode_entry


def _box(tmp: Path) -> SecretBox:
    return SecretBox.default(tmp / "key")


def _inbox(n: int, password: str = "s3cret-pw") -> InboxSettings:
    return InboxSettings(
        id=f"i{n}@x.test", imap_host="imap.x.test", username="u", password=password
    )


def test_an_entry_round_trips_and_holds_no_password(tmp_path: Path) -> None:
    box = _box(tmp_path)
    value = encode_entry(_inbox(1), box)
    assert b"s3cret-pw" not in value
    assert decode_entry(value, box) == _inbox(1)


def test_records_that_are_not_inboxes_are_reasons_not_inboxes(tmp_path: Path) -> None:
    box = _box(tmp_path)
    view = RegistryView(partitions=4)
    view.apply(0, b"bad@x.test", b"\xff not json", box)
    view.apply(1, b"half@x.test", b'{"id": "half@x.test"}', box)
    clear = b'{"id": "c@x.test", "imap_host": "h", "username": "u", "password": "in-clear"}'
    view.apply(3, b"c@x.test", clear, box)
    other = SecretBox.default(tmp_path / "other-key")
    view.apply(2, b"i3@x.test", encode_entry(_inbox(3), other), box)  # another key's token
    assert view.inboxes == {}
    assert set(view.errors) == {"bad@x.test", "half@x.test", "i3@x.test", "c@x.test"}
    assert "in clear" in view.errors["c@x.test"]
    assert "s3cret-pw" not in " ".join(view.errors.values())
    assert "in-clear" not in " ".join(view.errors.values())
    # still placed: an update or a removal must go to the same partition
    assert view.placed == {"bad@x.test": 0, "half@x.test": 1, "i3@x.test": 2, "c@x.test": 3}


def test_a_tombstone_removes_and_frees_the_place(tmp_path: Path) -> None:
    box = _box(tmp_path)
    view = RegistryView(partitions=2)
    view.apply(0, b"i1@x.test", encode_entry(_inbox(1), box), box)
    view.apply(1, b"i2@x.test", encode_entry(_inbox(2), box), box)
    view.apply(0, b"i1@x.test", None, box)
    assert set(view.inboxes) == {"i2@x.test"} and view.placed == {"i2@x.test": 1}
    assert view.least_loaded() == 0


@settings(max_examples=50, deadline=None)
@given(partitions=st.integers(1, 60), adds=st.integers(0, 400))
def test_adding_fills_partitions_evenly(partitions: int, adds: int) -> None:
    view = RegistryView(partitions=partitions)
    for n in range(adds):
        view.placed[f"i{n}"] = view.least_loaded()
    counts = Counter(view.placed.values())
    full = [counts.get(p, 0) for p in range(partitions)]
    assert max(full) - min(full) <= 1
    # so any split of the partitions into equal shares splits the inboxes evenly
    if adds and partitions % 3 == 0:
        shares = [sum(full[p] for p in range(partitions) if p % 3 == k) for k in range(3)]
        assert max(shares) - min(shares) <= partitions // 3

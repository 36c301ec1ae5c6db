"""Pure pieces of the producer service: UID sets, VANISHED/IDLE parsing, backoff, the inbox
registry file format, checkpoint keys and password sources."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.app.cli_inbox import read_password
from inboxstream.core.settings import InboxSettings
from inboxstream.producers.checkpoints import checkpoint_key
from inboxstream.producers.live import (
    LiveTimings,
    compress_uid_set,
    expand_uid_set,
    is_change,
    vanished_uids,
)
from inboxstream.producers.registry import InboxRegistry, inbox_fingerprint
from inboxstream.producers.service import backoff_delay


@given(st.sets(st.integers(min_value=1, max_value=5000), min_size=1, max_size=200))
def test_uid_set_round_trip(uids: set[int]) -> None:
    ordered = sorted(uids)
    assert expand_uid_set(compress_uid_set(ordered)) == ordered


def test_uid_set_high_to_low_range() -> None:
    assert expand_uid_set("5:3,9") == [3, 4, 5, 9]
    assert compress_uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"


def test_vanished_lines_as_the_server_sends_them_and_as_aioimaplib_routes_them() -> None:
    assert vanished_uids([b"VANISHED (EARLIER) 3:4,9", b"1 FETCH (UID 1 FLAGS ())"]) == [3, 4, 9]
    assert vanished_uids([b"* VANISHED 7"]) == [7]
    # aioimaplib cuts the response name off lines it routes to a command of that name.
    assert vanished_uids([b"(EARLIER) 2:3", bytearray(b"5")], routed=True) == [2, 3, 5]
    # A FETCH line or a literal that happens to hold digits is not a VANISHED response.
    assert vanished_uids([b"12 FETCH (UID 40)", b"12345"]) == []


def test_idle_pushes_that_mean_a_change() -> None:
    assert is_change([b"3 EXISTS"])
    assert is_change([b"* 2 EXPUNGE"])
    assert is_change([b"4 FETCH (FLAGS (\\Seen) UID 9)"])
    assert is_change([b"VANISHED 5"])
    assert not is_change([b"OK Still here"])
    assert not is_change([b"2 RECENT"])


def test_dead_connection_bound_is_keepalive_plus_read_timeout() -> None:
    assert LiveTimings(120, 15, 30).dead_connection_bound_s == 135
    assert LiveTimings().keepalive_s < 29 * 60  # IDLE re-issued well before RFC 2177's limit


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_jittered_within_the_exponential_cap(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, 1.0, 300.0, random.Random(seed))
    assert 0 <= delay <= min(300.0, 2.0**attempt)


def test_backoff_spreads_reconnects() -> None:
    rng = random.Random(1)
    delays = {round(backoff_delay(5, 1.0, 300.0, rng), 3) for _ in range(50)}
    assert len(delays) > 40  # not synchronised: many inboxes do not reconnect in lockstep


def test_checkpoint_key_is_inbox_then_folder() -> None:
    assert checkpoint_key("a@b.c", "Sent/2024") == b"a@b.c/Sent/2024"


def inbox(**kw: object) -> InboxSettings:
    base: dict[str, object] = {
        "id": "a@b.c",
        "imap_host": "mail.b.c",
        "username": "a",
        "password": "s3cret",
    }
    return InboxSettings(**(base | kw))


def test_registry_round_trip_is_private_and_keeps_the_password(tmp_path: Path) -> None:
    registry = InboxRegistry(tmp_path / "inboxes")
    assert registry.add(inbox()) is True
    assert registry.add(inbox(imap_port=10993)) is False  # replaced, not duplicated
    path = tmp_path / "inboxes" / "a@b.c.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = registry.load()
    assert loaded["a@b.c"].imap_port == 10993
    assert loaded["a@b.c"].password.get_secret_value() == "s3cret"
    assert registry.remove("a@b.c") and not registry.remove("a@b.c")
    assert registry.load() == {}


def test_a_broken_registry_file_is_skipped_without_leaking_it(tmp_path: Path) -> None:
    registry = InboxRegistry(tmp_path)
    registry.add(inbox())
    (tmp_path / "bad.json").write_text('{"id": "x", "password": "leaky-secret"}')
    assert list(registry.load()) == ["a@b.c"]
    assert "bad.json" in registry.errors
    assert "leaky-secret" not in registry.errors["bad.json"]


def test_fingerprint_changes_with_the_password_only_when_it_changes() -> None:
    assert inbox_fingerprint(inbox()) == inbox_fingerprint(inbox())
    assert inbox_fingerprint(inbox()) != inbox_fingerprint(inbox(password="new"))
    assert "s3cret" not in inbox_fingerprint(inbox())


def test_password_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PW", "from-env")
    assert read_password("IMAP_PW", None) == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    assert read_password(None, secret) == "from-file"
    monkeypatch.delenv("IMAP_PW")
    with pytest.raises(click.UsageError, match="IMAP_PW"):
        read_password("IMAP_PW", None)

"""Inbox secrets at rest: encrypted files, migration of clear-text files, wrong keys, rekey."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from inboxstream.core.settings import InboxSettings
from inboxstream.core.vault import KEY_ENV, SecretBox
from inboxstream.producers.registry import InboxRegistry

PASSWORD = "s3cret-Pässword-for-the-test"


def _inbox(inbox_id: str = "ann@example.com") -> InboxSettings:
    return InboxSettings(
        id=inbox_id, imap_host="imap.example.com", username=inbox_id, password=PASSWORD
    )


def _registry(tmp_path: Path) -> InboxRegistry:
    return InboxRegistry(tmp_path / "inboxes", SecretBox.default(tmp_path / "secret.key"))


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _everything_on_disk(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file())


def test_the_password_is_stored_encrypted_and_loads_back(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.add(_inbox())
    data = json.loads((tmp_path / "inboxes" / "ann@example.com.json").read_text())
    assert "password" not in data and data["password_encrypted"].startswith("gAAAA")
    assert PASSWORD.encode() not in _everything_on_disk(tmp_path)
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    loaded = _registry(tmp_path).load()
    assert loaded["ann@example.com"].password.get_secret_value() == PASSWORD


def test_a_clear_text_file_from_before_is_migrated_on_first_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "inboxes"
    folder.mkdir()
    old = _inbox().model_dump(mode="json") | {"password": PASSWORD}
    (folder / "ann@example.com.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        loaded = _registry(tmp_path).load()
    assert loaded["ann@example.com"].password.get_secret_value() == PASSWORD
    assert PASSWORD.encode() not in _everything_on_disk(tmp_path)
    assert "now encrypted" in caplog.text and PASSWORD not in caplog.text
    assert _registry(tmp_path).load()["ann@example.com"].password.get_secret_value() == PASSWORD


def test_a_wrong_key_skips_the_file_with_a_reason_and_no_secret(tmp_path: Path) -> None:
    _registry(tmp_path).add(_inbox())
    (tmp_path / "secret.key").write_bytes(Fernet.generate_key())
    registry = _registry(tmp_path)
    assert registry.load() == {}
    reason = registry.errors["ann@example.com.json"]
    assert "does not decrypt" in reason and PASSWORD not in reason


def test_rekey_with_a_new_key_retires_the_old_one(tmp_path: Path) -> None:
    _registry(tmp_path).add(_inbox("a@example.com"))
    _registry(tmp_path).add(_inbox("b@example.com"))
    old_key = (tmp_path / "secret.key").read_bytes().strip()
    registry = _registry(tmp_path)
    registry.box.add_new_key()
    assert registry.rekey() == 2 and not registry.errors
    registry.box.drop_old_keys()
    keys = (tmp_path / "secret.key").read_bytes().split()
    assert len(keys) == 1 and keys[0] != old_key
    assert set(_registry(tmp_path).load()) == {"a@example.com", "b@example.com"}
    # The old key alone no longer opens anything.
    (tmp_path / "secret.key").write_bytes(old_key)
    assert _registry(tmp_path).load() == {}


def test_keys_from_the_environment_rotate_new_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, old)
    _registry(tmp_path).add(_inbox())
    assert not (tmp_path / "secret.key").exists()  # no key file when the env holds the key
    monkeypatch.setenv(KEY_ENV, f"{new},{old}")
    assert _registry(tmp_path).rekey() == 1
    monkeypatch.setenv(KEY_ENV, new)
    assert _registry(tmp_path).load()["ann@example.com"].password.get_secret_value() == PASSWORD
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    registry = _registry(tmp_path)
    assert registry.load() == {}
    assert "not a Fernet key" in registry.errors["ann@example.com.json"]

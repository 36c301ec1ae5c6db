from __future__ import annotations

from pathlib import Path

import pytest

from inboxstream.core.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("INBOXSTREAM_") and key != "INBOXSTREAM_HOME":
            monkeypatch.delenv(key)


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.topics.messages.name == "inbox.messages"
    assert s.topics.bodies.retention_ms == 7 * 24 * 3600 * 1000
    assert s.topics.messages.retention_ms == 60 * 24 * 3600 * 1000
    assert s.topics.checkpoints.compacted
    assert s.clickhouse.url is None


def test_env_vars_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092,10.0.0.2:9092")
    monkeypatch.setenv("INBOXSTREAM_SINK__BATCH_SIZE", "77")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092,10.0.0.2:9092"
    assert s.sink.batch_size == 77


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception, match="frozen"):
        s.log_level = "DEBUG"  # type: ignore[misc]


def test_bad_value_fails_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS", "no-port-here")
    with pytest.raises(SettingsError, match=r"kafka\.bootstrap_servers"):
        load_settings()


def test_bad_number_names_the_nested_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXSTREAM_SINK__BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match=r"sink\.batch_size"):
        load_settings()


def test_config_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "inboxstream.toml"
    config.write_text(
        """
log_level = "DEBUG"
[kafka]
bootstrap_servers = "file-host:9092"
[[inboxes]]
id = "alice@example.com"
imap_host = "imap.example.com"
username = "alice"
password = "hunter2-secret"
"""
    )
    monkeypatch.setenv("INBOXSTREAM_LOG_LEVEL", "ERROR")
    s = load_settings(config)
    assert s.kafka.bootstrap_servers == "file-host:9092"
    assert s.log_level == "ERROR"  # env wins over the file
    inbox = s.inboxes[0]
    assert inbox.password.get_secret_value() == "hunter2-secret"
    # Secrets never show in reprs, dumps or logs.
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())


def test_bad_inbox_in_file_names_index_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[inboxes]]\nid = "a"\nimap_host = "h"\nusername = "u"\npassword = "topsecret"\n'
        "imap_port = 70000\n"
    )
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert "inboxes.0.imap_port" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_unknown_key_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[kafka]\nbootstrap_server = 'typo:1'\n")
    with pytest.raises(SettingsError, match=r"kafka\.bootstrap_server"):
        load_settings(config)


def test_topic_prefix_renames_every_topic() -> None:
    topics = load_settings().topics.with_prefix("t1.")
    assert all(spec.name.startswith("t1.") for spec in topics.all())
    assert topics.checkpoints.compacted

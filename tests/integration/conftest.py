"""Session fixtures for the real services.

Each service is started once per test run; a service that was already running (say, from the
demo) is reused and left running, and only what this run started is stopped at the end.
A service that cannot start fails the tests loudly: it is never a skip.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from inboxstream.core.settings import (
    ClickHouseSettings,
    InboxSettings,
    KafkaSettings,
    Settings,
    SinkSettings,
    TopicSettings,
    load_settings,
)
from inboxstream.infra import dovecot, kafka, postfix


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    kafka.install()
    started = kafka.start()
    try:
        yield kafka.bootstrap_servers()
    finally:
        if started:
            kafka.stop()


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[dovecot.DovecotEndpoints]:
    dovecot.install()
    started = dovecot.start()
    try:
        yield dovecot.endpoints()
    finally:
        if started:
            dovecot.stop()


@pytest.fixture(scope="session")
def postfix_server(
    dovecot_server: dovecot.DovecotEndpoints,
) -> Iterator[postfix.PostfixEndpoints]:
    """SMTP submission (AUTH via Dovecot, delivery into Dovecot over LMTP)."""
    postfix.install()
    started = postfix.start()
    try:
        yield postfix.endpoints()
    finally:
        if started:
            postfix.stop()


@pytest.fixture
def unique() -> str:
    """A short random suffix for topic names, users and mailboxes owned by one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded ClickHouse path for the whole run (chDB allows one per process);
    each test gets its own database inside it."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse_settings(chdb_path: Path, unique: str) -> ClickHouseSettings:
    """Embedded by default; the same tests run against a server when CLICKHOUSE_URL is set."""
    url = os.environ.get("CLICKHOUSE_URL")
    return ClickHouseSettings(
        path=chdb_path, url=SecretStr(url) if url else None, database=f"test_{unique}"
    )


@pytest.fixture
def settings(
    kafka_bootstrap: str, clickhouse_settings: ClickHouseSettings, unique: str
) -> Settings:
    """Settings pointing at the real services, with topics and groups of this test only."""
    return load_settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topics=TopicSettings().with_prefix(f"t{unique}."),
        clickhouse=clickhouse_settings,
        sink=SinkSettings(group_id=f"sink-{unique}", batch_timeout_s=0.3),
    )


@dataclass(frozen=True)
class MailUser:
    name: str
    password: str = field(repr=False)

    def inbox(self) -> InboxSettings:
        from inboxstream.app.demo import demo_inbox

        return demo_inbox(self.password, self.name)


@pytest.fixture
def mail_user(dovecot_server: dovecot.DovecotEndpoints, unique: str) -> Iterator[MailUser]:
    """A fresh Dovecot user (own mailbox) for one test; removed afterwards."""
    user = MailUser(f"u{unique}@inboxstream.test", secrets.token_urlsafe(12))
    dovecot.add_user(user.name, user.password)
    try:
        yield user
    finally:
        dovecot.remove_user(user.name)

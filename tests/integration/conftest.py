"""Session fixtures for the real services.

Each service is started once per test run; a service that was already running (say, from the
demo) is reused and left running, and only what this run started is stopped at the end.
A service that cannot start fails the tests loudly: it is never a skip.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import (
    ClickHouseSettings,
    KafkaSettings,
    MetricsSettings,
    Settings,
    SinkSettings,
    TopicSettings,
    load_settings,
)
from inboxstream.infra import dovecot, kafka, postfix, schema_registry
from inboxstream.send.sender import MailSender
from tests.helpers.send import Person, make_person
from tests.helpers.services import MailUser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration talks to the real services: marked by folder, so
    ``-m "not integration"`` runs the unit tests alone and no file can forget the mark."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker, and the schema registry our values are framed for (they go together:
    every client's default ``kafka.schema_registry_url`` is that registry)."""
    kafka.install()
    schema_registry.install()
    started = kafka.start()
    registry_started = schema_registry.start()
    try:
        yield kafka.bootstrap_servers()
    finally:
        if registry_started:
            schema_registry.stop()
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
        # tests run many services side by side: the one that tests the endpoints picks ports
        metrics=MetricsSettings(producer_port=0, processor_port=0, sink_port=0),
    )


@pytest.fixture
def mail_user(dovecot_server: dovecot.DovecotEndpoints, unique: str) -> Iterator[MailUser]:
    """A fresh Dovecot user (own mailbox) for one test; removed afterwards."""
    user = MailUser(f"u{unique}@inboxstream.test", secrets.token_urlsafe(12))
    dovecot.add_user(user.name, user.password)
    try:
        yield user
    finally:
        dovecot.remove_user(user.name)


@pytest.fixture
def people(
    postfix_server: postfix.PostfixEndpoints, unique: str
) -> Iterator[Callable[..., Person]]:
    """Factory of fresh users (``people("bob")``, ``people("c", special_use=False, ...)``)."""
    made: list[Person] = []

    def make(label: str, **kwargs: Any) -> Person:
        person = make_person(f"{label}{unique}@inboxstream.test", **kwargs)
        made.append(person)
        return person

    try:
        yield make
    finally:
        for person in made:
            dovecot.remove_user(person.name)


@pytest.fixture
async def mail_sender(settings: Settings) -> AsyncIterator[MailSender]:
    await ensure_topics(settings.kafka, settings.topics, [settings.topics.crm_outbound])
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        yield MailSender(producer, settings.topics)
    finally:
        await producer.stop()

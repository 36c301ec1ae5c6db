"""Session fixtures for the real services.

Each service is started once per test run; a service that was already running (say, from the
demo) is reused and left running, and only what this run started is stopped at the end.
A service that cannot start fails the tests loudly: it is never a skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra import dovecot, kafka


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


@pytest.fixture
def unique() -> str:
    """A short random suffix for topic names, users and mailboxes owned by one test."""
    return uuid.uuid4().hex[:10]

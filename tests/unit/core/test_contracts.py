"""One source per contract: retention, sizes, the topic registry and the error tree."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import inboxstream
from inboxstream.core import contracts
from inboxstream.core.settings import TopicSettings
from inboxstream.errors import InboxstreamError
from inboxstream.processors import retention as processor_retention
from inboxstream.producers import parse
from inboxstream.send import sender
from inboxstream.sinks import retention as sink_retention

MIGRATIONS = Path(inboxstream.__file__).parent / "sinks" / "sql" / "migrations"
#: the retention each table's TTL must state, in days (None: no TTL, kept until purged)
TABLE_RETENTION = {
    "email_metadata": contracts.METADATA_RETENTION_DAYS,
    "bodies": contracts.BODY_RETENTION_DAYS,
    "threads": contracts.METADATA_RETENTION_DAYS,
    "inbox_status": contracts.METADATA_RETENTION_DAYS,
    "engagements": None,
    "crm_outbound": None,
}


def _table_ttls() -> dict[str, int | None]:
    """Table -> the days of its TTL clause, from every CREATE TABLE in the migrations."""
    sql = "\n".join(p.read_text() for p in sorted(MIGRATIONS.glob("*.sql")))
    sql = re.sub(r"--[^\n]*", "", sql)  # comments talk about TTLs too
    ttls: dict[str, int | None] = {}
    for match in re.finditer(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)(.*?);", sql, re.S):
        found = re.findall(r"\bTTL\b[^;]*?INTERVAL\s+(\d+)\s+DAY", match.group(2))
        ttls[match.group(1)] = int(found[0]) if found else None
    return ttls


def test_sql_ttls_agree_with_the_contracts() -> None:
    ttls = _table_ttls()
    assert {t: ttls.get(t, "missing") for t in TABLE_RETENTION} == TABLE_RETENTION


def test_every_registered_table_exists_and_has_its_retention_stated() -> None:
    tables = {c.table for c in contracts.TOPICS if c.table}
    assert tables <= set(_table_ttls()) and tables == set(TABLE_RETENTION)


def test_retention_everywhere_comes_from_the_contracts() -> None:
    day = contracts.DAY_MS
    assert processor_retention.BODY_TTL_MS == contracts.BODY_RETENTION_DAYS * day
    assert processor_retention.METADATA_TTL_MS == contracts.METADATA_RETENTION_DAYS * day
    assert processor_retention.DELETED_PURGE_MS == contracts.DELETED_ENGAGEMENT_PURGE_DAYS * day
    assert sink_retention.ENGAGEMENT_PURGE_AFTER.days == contracts.DELETED_ENGAGEMENT_PURGE_DAYS
    topics = TopicSettings()
    assert topics.bodies.retention_ms == contracts.BODY_RETENTION_DAYS * day
    assert (
        topics.messages.retention_ms
        == topics.threads.retention_ms
        == (contracts.METADATA_RETENTION_DAYS * day)
    )


def test_one_size_limit() -> None:
    assert parse.ATTACHMENT_LOG_LIMIT == sender.MAX_MESSAGE_BYTES == contracts.MAX_MESSAGE_BYTES


def test_the_registry_names_each_model_topic_and_setting_once() -> None:
    topics = TopicSettings().with_prefix("x.")
    models = [c.model for c in contracts.TOPICS]
    assert len(set(models)) == len(models)
    for contract in contracts.TOPICS:
        assert contracts.contract_for(contract.model) is contract
        assert contracts.topic_for(topics, contract.model) == contract.spec(topics).name
        assert contract.spec(topics).name.startswith("x.")
    assert topics.prefix == topics.internal_prefix == "x."


def test_an_unset_prefix_is_read_off_the_names_as_before() -> None:
    named = TopicSettings().model_copy(
        update={
            "messages": TopicSettings().messages.model_copy(update={"name": "acme.inbox.messages"})
        }
    )
    assert named.prefix is None and named.internal_prefix == "acme."
    assert TopicSettings().internal_prefix == ""
    explicit = named.model_copy(update={"prefix": "other."})
    assert explicit.internal_prefix == "other."


def _our_modules() -> list[str]:
    names = ["inboxstream.errors"]
    for info in pkgutil.walk_packages(inboxstream.__path__, "inboxstream."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_error_is_under_the_root_and_says_whether_a_retry_helps() -> None:
    errors = []
    for name in _our_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                errors.append(value)
    assert len(errors) > 20  # the walk really found the project's errors
    outside = [e.__qualname__ for e in errors if not issubclass(e, InboxstreamError)]
    assert outside == []
    assert all(isinstance(e.retriable, bool) for e in errors)

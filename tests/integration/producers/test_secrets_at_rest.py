"""After a full run, first with a wrong password and then with the right one, neither password
is anywhere we write: the producer's log, any topic of the run (values, keys, headers), any
table, the registry files or the key file."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from inboxstream.app.pipeline import open_clickhouse, run_sink
from inboxstream.core.kafka import make_consumer, partitions_of, read_to_end
from inboxstream.core.settings import Settings
from inboxstream.core.vault import SecretBox
from inboxstream.infra import dovecot
from inboxstream.processors.processor import ProcessorConfig, run_processor
from inboxstream.producers.registry import InboxRegistry
from tests.helpers.service import fast_settings, idle_on, readers, service_env
from tests.helpers.services import MailUser


async def _all_topic_bytes(settings: Settings, prefix: str) -> bytes:
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    chunks: list[bytes] = []
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
        assert len(topics) >= 4, topics
        tps = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if tps:
            async for batch in read_to_end(consumer, tps):
                for r in batch:
                    chunks += [r.key or b"", r.value or b""]
                    chunks += [k.encode() + v for k, v in r.headers]
    finally:
        await consumer.stop()
    return b"".join(chunks)


async def test_no_password_anywhere_after_a_wrong_then_right_password(
    settings: Settings,
    mail_user: MailUser,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "Wr0ng-" + secrets.token_urlsafe(12)
    right = mail_user.password
    s = fast_settings(settings, tmp_path / "inboxes", secret_key_file=tmp_path / "keys" / "k")
    registry = InboxRegistry(s.producer.registry_dir, SecretBox.default(tmp_path / "keys" / "k"))
    registry.add(mail_user.inbox().model_copy(update={"password": SecretStr(wrong)}))
    log = tmp_path / "service.log"
    cli = Path(sys.executable).with_name("inboxstream")
    proc = subprocess.Popen(
        [str(cli), "--log-level", "DEBUG", "producer", "run", "--no-progress"],
        env=service_env(s),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        async with readers(s) as (messages, status):
            await status.wait_for(
                lambda ev: any(e.state == "disconnected" and e.error_kind for e in ev),
                timeout=60,
                what="the wrong password refused",
            )
            registry.add(mail_user.inbox())  # the right password: the service reconnects
            dovecot.deliver(mail_user.name, b"Subject: hello\r\nMessage-ID: <s@x>\r\n\r\nhi\r\n")
            await status.wait_for(idle_on("INBOX"), timeout=60, what="INBOX idle")
            await messages.wait_for(lambda ev: len(ev) >= 1, timeout=60, what="the message")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    with caplog.at_level(logging.DEBUG):
        await run_processor(s, ProcessorConfig(group_id=f"sec-{unique}"), until_end=True)
        ch = open_clickhouse(s)
        await run_sink(s, ch, until_caught_up=True, timeout=60)

    places: dict[str, bytes] = {
        "producer log": log.read_bytes(),
        "processor and sink logs": caplog.text.encode(),
        "topics": await _all_topic_bytes(s, f"t{unique}."),
        "files": b"".join(
            p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p != log
        ),
    }
    tables = ch.query(f"SELECT name FROM system.tables WHERE database = '{ch.database}'")
    assert len(tables) >= 5
    places["tables"] = b"".join(
        ch.query_bytes(f"SELECT * FROM {ch.database}.`{t['name']}`", "TSVRaw") for t in tables
    )
    assert b"hello" in places["tables"]  # the run did land
    assert (
        b"authentication" in places["producer log"].lower()
        or b"auth" in places["producer log"].lower()
    )
    for where, data in places.items():
        for password in (wrong, right):
            assert password.encode() not in data, f"a password is in the {where}"
    await asyncio.sleep(0)

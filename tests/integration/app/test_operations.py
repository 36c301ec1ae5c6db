"""Operations as deployed: the producer, the processor and the sink run as their own processes
and each serves Prometheus metrics, /healthz and /readyz on its loopback port; the figures
follow what they did (inbox state and connections, messages and bytes, errors by kind, batch
histograms, lag per partition, transactions, rows, dead letters)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from inboxstream.core.settings import ClickHouseSettings, Settings
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import MessageEvent
from inboxstream.schemas.serde import serde_for
from tests.helpers.events import produce_raw
from tests.helpers.net import free_port, http_get
from tests.helpers.service import deliver_many, fast_settings, service_env
from tests.helpers.services import MailUser

CLI = str(Path(sys.executable).with_name("inboxstream"))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    status, text = http_get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def until(check: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def test_each_stage_serves_metrics_health_and_readiness(
    settings: Settings, mail_user: MailUser, tmp_path: Path, unique: str
) -> None:
    s = fast_settings(settings, tmp_path / "inboxes").model_copy(
        update={
            "clickhouse": ClickHouseSettings(path=tmp_path / "chdb", database=f"ops_{unique}"),
        }
    )
    registry = InboxRegistry(s.producer.registry_dir)
    registry.add(mail_user.inbox())
    wrong = mail_user.inbox().model_copy(
        update={"id": f"wrong-{unique}", "password": SecretStr("not-the-password")}
    )
    registry.add(wrong)
    await asyncio.to_thread(deliver_many, mail_user.name, 12)

    env = service_env(s)
    env["INBOXSTREAM_CLICKHOUSE"] = s.clickhouse.model_dump_json()
    env["INBOXSTREAM_SINK"] = s.sink.model_dump_json()
    ports = {"producer": free_port(), "processor": free_port(), "sink": free_port()}
    commands = {
        "producer": ["producer", "run", "--no-progress"],
        "processor": ["process", "--group-id", f"proc-{unique}"],
        "sink": ["sink", "run", "--no-serve-queries"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in commands.items():
            log = (tmp_path / f"{name}.log").open("ab")
            procs[name] = subprocess.Popen(
                [CLI, *args, "--metrics-port", str(ports[name])],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def answers(name: str) -> bool:
            try:
                return http_get(ports[name], "/healthz")[0] == 200
            except OSError:
                return False

        for name in commands:
            await until(lambda n=name: answers(n), f"{name} /healthz")  # type: ignore[misc]

        # A poison record: the processor and the sink dead-letter it, nothing stops.
        headers = serde_for(MessageEvent).headers("message.new")
        await produce_raw(s, s.topics.messages.name, b"\x00\x00\x00\x00\x01garbage", headers)

        await until(
            lambda: (
                value(
                    scrape(ports["sink"]), "inboxstream_rows_inserted_total", table="email_metadata"
                )
                >= 12
            ),
            "12 email_metadata rows",
        )
        await until(
            lambda: (
                value(scrape(ports["sink"]), "inboxstream_dead_letters_total", stage="sink") >= 1
            ),
            "the sink's dead letter",
        )
        producer = scrape(ports["producer"])
        inbox = mail_user.inbox().id
        assert value(producer, "inboxstream_inbox_messages_published_total", inbox=inbox) == 12
        assert (
            value(producer, "inboxstream_inbox_state", inbox=inbox, inboxstream_inbox_state="idle")
            == 1
        )
        assert value(producer, "inboxstream_inbox_connections", inbox=inbox) >= 1
        assert (
            value(
                producer,
                "inboxstream_published_records_total",
                topic=s.topics.messages.name,
            )
            >= 12
        )
        assert value(producer, "inboxstream_published_bytes_total", topic=s.topics.bodies.name) > 0
        assert value(producer, "inboxstream_batch_records_count", component="producer") >= 1
        assert value(producer, "inboxstream_batch_seconds_count", component="producer") >= 1
        # the inbox with the wrong password: an auth error, and its state says so. Dovecot
        # answers a failed login only after its auth_failure_delay, so the good inbox can be
        # all in ClickHouse before the bad one has its answer: wait for it.
        await until(
            lambda: (
                value(
                    scrape(ports["producer"]),
                    "inboxstream_errors_total",
                    component="producer",
                    kind="auth",
                )
                >= 1
            ),
            "the wrong password's auth error",
        )
        producer = scrape(ports["producer"])
        assert (
            value(
                producer,
                "inboxstream_inbox_state",
                inbox=wrong.id,
                inboxstream_inbox_state="disconnected",
            )
            == 1
        )

        await until(
            lambda: (
                value(
                    scrape(ports["processor"]), "inboxstream_transactions_total", result="committed"
                )
                >= 1
            ),
            "a committed transaction",
        )
        processor = scrape(ports["processor"])
        assert value(processor, "inboxstream_batch_records_count", component="processor") >= 1
        assert value(processor, "inboxstream_transactions_total", result="aborted") == 0
        lag_series = [
            lab
            for (n, lab), _ in processor.items()
            if n == "inboxstream_consumer_lag" and ("topic", s.topics.messages.name) in lab
        ]
        assert lag_series, "no lag series for the messages topic"
        sink = scrape(ports["sink"])
        assert value(sink, "inboxstream_consumer_lag", group=s.sink.group_id) >= 0
        assert any(n == "inboxstream_consumer_lag" for n, _ in sink)
        # the rows count at insert, the batch when its offsets are committed, a moment later
        await until(
            lambda: (
                value(scrape(ports["sink"]), "inboxstream_batch_seconds_count", component="sink")
                >= 1
            ),
            "the sink's first committed batch",
        )

        for name in commands:
            assert http_get(ports[name], "/readyz") == (200, "ok\n"), name
            assert http_get(ports[name], "/healthz") == (200, "ok\n"), name
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
            except subprocess.TimeoutExpired:
                proc.kill()
                raise

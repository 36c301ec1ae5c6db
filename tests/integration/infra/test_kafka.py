"""The local Kafka from infra/kafka.py: health, version, what aiokafka 0.14 can do with it, restart.

The compatibility test is the evidence behind KAFKA_VERSION: everything the pipeline relies on
(compacted topics created by the admin client, idempotent producers, read_committed consumers,
committed and aborted transactions, consume-transform-produce with send_offsets_to_transaction)
must work against the pinned broker.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from inboxstream.infra import kafka
from inboxstream.infra.common import port_open, service_dir


async def _create_topics(bootstrap: str, topics: Iterable[NewTopic]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(list(topics))
        errors = [t for t in response.to_object()["topic_errors"] if t["error_code"] != 0]
        assert not errors, errors
    finally:
        await admin.close()


async def _read(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    isolation: str = "read_committed",
    timeout: float = 30,
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of ``topic`` visible at ``isolation``, group-less.

    Reads until ``expected`` records arrived, then drains for a moment more so a record that
    should not be visible (an aborted one) would show up as an extra.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes | None]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            records += [(m.key, m.value) for msgs in batches.values() for m in msgs]
        batches = await consumer.getmany(timeout_ms=1000)
        records += [(m.key, m.value) for msgs in batches.values() for m in msgs]
    finally:
        await consumer.stop()
    return records


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port``; Java's dual-stack ::ffff:127.0.0.1 is 127.0.0.1."""
    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


async def test_health(kafka_bootstrap: str) -> None:
    port = int(os.environ.get("INBOXSTREAM_KAFKA_PORT") or kafka.DEFAULT_PORT)
    controller = int(
        os.environ.get("INBOXSTREAM_KAFKA_CONTROLLER_PORT") or kafka.DEFAULT_CONTROLLER_PORT
    )
    assert kafka_bootstrap == kafka.bootstrap_servers() == f"127.0.0.1:{port}"

    status = kafka.status()
    assert status.name == "kafka"
    assert status.installed and status.running and status.pid
    assert status.endpoints == {
        "bootstrap": f"127.0.0.1:{port}",
        "controller": f"127.0.0.1:{controller}",
    }
    assert "serving" in status.detail and kafka.KAFKA_VERSION in status.detail

    # Loopback only, for both listeners.
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert _listening_addresses(controller) == {"127.0.0.1"}

    # Idempotent: already installed and running.
    assert kafka.install() is False
    assert kafka.start() is False
    assert kafka.status().pid == status.pid

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [
        (1, "127.0.0.1", port)
    ]
    assert cluster["controller_id"] == 1


async def test_version_and_aiokafka_compat(kafka_bootstrap: str, unique: str) -> None:
    # The broker says which version it is when it starts, and runs from that version's jars.
    assert kafka.running_version() == kafka.KAFKA_VERSION
    pid = kafka.status().pid
    assert pid is not None
    cmdline = psutil.Process(pid).cmdline()
    classpath = Path(cmdline[cmdline.index("-cp") + 1])
    assert classpath.parent.name == f"libs-{kafka.KAFKA_VERSION}"
    assert (classpath.parent / f"kafka-clients-{kafka.KAFKA_VERSION}.jar").exists()
    assert (classpath.parent / f"kafka_2.13-{kafka.KAFKA_VERSION}.jar").exists()

    source, sink, group = f"compat-src-{unique}", f"compat-out-{unique}", f"compat-{unique}"

    # Admin: a compacted topic (as our state topics are) and a plain one.
    await _create_topics(
        kafka_bootstrap,
        [
            NewTopic(
                source,
                num_partitions=3,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"},
            ),
            NewTopic(sink, num_partitions=1, replication_factor=1),
        ],
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, source, {"cleanup.policy": None})]
        )
        entries = described[0].to_object()["resources"][0]["config_entries"]
        assert {e["config_names"]: e["config_value"] for e in entries} == {
            "cleanup.policy": "compact"
        }
    finally:
        await admin.close()

    # Idempotent producer.
    keyed = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(6)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for key, value in keyed:
            await producer.send_and_wait(source, value, key=key)
    finally:
        await producer.stop()

    # read_committed consumer in a consumer group (group coordinator, manual offsets).
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    consumed: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(consumed) < len(keyed) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            consumed += [m for msgs in batches.values() for m in msgs]
    finally:
        await consumer.stop()
    assert sorted((m.key, m.value) for m in consumed) == keyed

    # Transactions: one committed, one aborted, one consume-transform-produce that commits
    # the consumer group's offsets with the output (send_offsets_to_transaction).
    txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{unique}")
    await txn.start()
    offsets: dict[TopicPartition, int] = {}
    try:
        async with txn.transaction():
            await txn.send(sink, b"committed", key=b"plain")
        await txn.begin_transaction()
        await txn.send_and_wait(sink, b"aborted", key=b"plain")
        await txn.abort_transaction()
        async with txn.transaction():
            for m in consumed:
                await txn.send(sink, b"out-" + m.value, key=m.key)
                tp = TopicPartition(m.topic, m.partition)
                offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
            await txn.send_offsets_to_transaction(offsets, group)
    finally:
        await txn.stop()

    expected = sorted([(b"plain", b"committed")] + [(k, b"out-" + v) for k, v in keyed])
    committed_view = await _read(kafka_bootstrap, sink, len(expected))
    assert sorted(committed_view) == expected
    # The aborted record is in the log (read_uncommitted sees it) but not for read_committed.
    uncommitted_view = await _read(
        kafka_bootstrap, sink, len(expected) + 1, isolation="read_uncommitted"
    )
    assert sorted(uncommitted_view) == sorted(expected + [(b"plain", b"aborted")])

    # The group's offsets were committed by the transaction. The commit markers are written
    # after EndTxn returns, so give the coordinator a moment.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            fetched = await admin.list_consumer_group_offsets(group)
            got = {tp: meta.offset for tp, meta in fetched.items()}
            if got == offsets or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    assert got == offsets


async def test_restart_keeps_log(kafka_bootstrap: str, unique: str) -> None:
    topic = f"restart-{unique}"
    await _create_topics(kafka_bootstrap, [NewTopic(topic, num_partitions=3, replication_factor=1)])
    records = [(f"k{i}".encode(), f"before-restart-{i}".encode()) for i in range(20)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    meta = service_dir("kafka") / "data" / "meta.properties"
    meta_before = meta.read_text()
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    try:
        await asyncio.to_thread(kafka.stop)
        status = kafka.status()
        assert not status.running and status.pid is None
        assert not port_open("127.0.0.1", port)
        kafka.stop()  # stopping a stopped broker is a no-op

        assert await asyncio.to_thread(kafka.start) is True
    finally:
        # Other tests share this broker: whatever happened above, leave it running.
        if not kafka.status().running:
            await asyncio.to_thread(kafka.start)

    assert kafka.status().running
    assert meta.read_text() == meta_before  # same storage, not reformatted
    assert kafka.running_version() == kafka.KAFKA_VERSION
    assert sorted(await _read(kafka_bootstrap, topic, len(records))) == sorted(records)


async def test_the_stock_command_line_tools_ship_and_read_our_topics(
    kafka_bootstrap: str, unique: str
) -> None:
    """kafka-topics.sh lists a topic we made; kafka-console-consumer.sh prints one of our
    records with its key and its inboxstream.* headers; kafka-consumer-groups.sh lists."""
    import subprocess

    from inboxstream.schemas.models import StatusEvent
    from inboxstream.schemas.serde import serde_for

    topic = f"tools-{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    serde = serde_for(StatusEvent)
    event = StatusEvent(
        event_id="e1", inbox_id="tools@example.test", state="idle", at=datetime.now(UTC)
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, serde.encode(event), key=b"tools@example.test", headers=serde.headers("idle")
        )
    finally:
        await producer.stop()

    def tool(script: str, *args: str) -> str:
        done = subprocess.run(
            [str(kafka.bin_dir() / script), "--bootstrap-server", kafka_bootstrap, *args],
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.decode("utf-8", "replace")  # Avro values are binary

    assert topic in tool("kafka-topics.sh", "--list").split()
    printed = tool(
        "kafka-console-consumer.sh",
        "--topic",
        topic,
        "--from-beginning",
        "--max-messages",
        "1",
        "--timeout-ms",
        "30000",
        "--property",
        "print.headers=true",
        "--property",
        "print.key=true",
    )
    assert "inboxstream.schema:inbox.status" in printed
    assert "inboxstream.event-type:idle" in printed
    assert "tools@example.test" in printed
    assert isinstance(tool("kafka-consumer-groups.sh", "--list"), str)

"""Registry-framed Avro on the real Kafka, the real Apicurio Registry and stock readers.

Every topic's schemas are registered under ``<topic>-value`` with BACKWARD compatibility; every
value is magic byte 0 + schema id + datum, with our headers kept; confluent-kafka's
``AvroDeserializer`` and ClickHouse's own ``AvroConfluent`` format (chDB) read the records
through the registry and get what we decode.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from inboxstream.core.kafka import ensure_topics, make_consumer
from inboxstream.core.schema_registry import (
    TOPIC_SCHEMAS,
    IncompatibleSchemaError,
    register_schema,
    subject_for,
)
from inboxstream.core.settings import Settings
from inboxstream.schemas.models import CheckpointEvent, Event, StatusEvent
from inboxstream.schemas.serde import (
    HEADER_FINGERPRINT,
    HEADER_WIRE,
    default_registry,
    header,
    serde_for,
)
from inboxstream.sinks.clickhouse import EmbeddedClickHouse
from tests.helpers import events as ev
from tests.helpers.events import produce


def one_of_each(now: datetime) -> dict[str, list[Event]]:
    """TopicSettings field -> events for it: every Avro topic, old and new schema fields."""
    return {
        "messages": [ev.message("ann@x", 1, received=now), ev.message("ann@x", 2, received=now)],
        "bodies": [ev.body("ann@x", 1, received=now)],
        "status": [ev.status("ann@x", "idle", now), ev.status("ann@x", "disconnected", now, "r")],
        "crm_outbound": [ev.outbound("m1@crm", now)],
        "threads": [ev.assigned("ann@x", 1, "t1", now), ev.merged("ann@x", "t1", ["t2"], now)],
        "engagements": [ev.engagement("g1", "ann@x", "m1@crm", now)],
        "checkpoints": [
            CheckpointEvent(
                inbox_id="ann@x",
                folder="INBOX",
                uidvalidity=7,
                last_uid=9,
                updated_at=now,
                known_uids="1:9",
            )
        ],
    }


async def read_all(settings: Settings, topic: str, count: int) -> list:
    consumer = make_consumer(settings.kafka, topic, group_id=None)
    await consumer.start()
    try:
        got: list = []
        while len(got) < count:
            batches = await consumer.getmany(timeout_ms=5000)
            assert batches, f"{topic}: only {len(got)} of {count} records"
            got += [r for part in batches.values() for r in part]
        return got
    finally:
        await consumer.stop()


async def test_every_topic_is_registered_with_backward_compatibility(settings: Settings) -> None:
    await ensure_topics(settings.kafka, settings.topics)
    url = settings.kafka.schema_registry_url
    assert url is not None
    for field, schema in TOPIC_SCHEMAS.items():
        subject = subject_for(getattr(settings.topics, field).name)
        # asked by name: GET /subjects lists a page only, and a registry that has served
        # many runs (benchmarks, earlier tests) holds more subjects than fit on it
        assert httpx.get(f"{url}/subjects/{subject}/versions").status_code == 200, subject
        config = httpx.get(f"{url}/config/{subject}").json()
        assert config["compatibilityLevel"] == "BACKWARD"  # what Confluent answers GET with
        versions = httpx.get(f"{url}/subjects/{subject}/versions").json()
        ours = default_registry().versions(schema)
        assert len(versions) == len(ours)  # our history, in order, nothing else
        latest = httpx.get(f"{url}/subjects/{subject}/versions/latest").json()
        registered = parse_schema(json.loads(latest["schema"]), named_schemas={})
        assert fingerprint(to_parsing_canonical_form(registered), "CRC-64-AVRO") == (
            ours[-1].fingerprint
        )

    # A version old records could not be read with is refused, with the reason.
    messages = default_registry().latest("inbox.messages")
    broken = json.loads(messages.text)
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "subject"]
    broken["fields"].append({"name": "required_now", "type": "string"})
    with pytest.raises(IncompatibleSchemaError, match="BACKWARD"):
        await register_schema(
            settings.kafka, subject_for(settings.topics.messages.name), json.dumps(broken)
        )


async def test_stock_readers_decode_every_topic_through_the_registry(
    settings: Settings, chdb_path: Path, unique: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=123000)
    url = settings.kafka.schema_registry_url
    assert url is not None
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": url}))
    for field, events in one_of_each(now).items():
        topic = getattr(settings.topics, field).name
        await produce(settings, topic, events)
        records = await read_all(settings, topic, len(events))
        serde = serde_for(type(events[0]))
        for record in records:
            value: bytes = record.value
            assert value[:1] == b"\x00"  # Confluent wire format: magic byte, schema id, datum
            schema_id = int.from_bytes(value[1:5], "big")
            registered = httpx.get(f"{url}/schemas/ids/{schema_id}").json()["schema"]
            parsed = parse_schema(json.loads(registered), named_schemas={})
            fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
            # our headers are kept, and agree with the id
            assert header(record.headers, HEADER_FINGERPRINT) == fp.encode()
            assert header(record.headers, HEADER_WIRE) == b"confluent"
            ours = serde.decode_record(value, record.headers)
            theirs = deserializer(value, SerializationContext(topic, MessageField.VALUE))
            assert theirs == ours, topic

    # ClickHouse reads the status topic's values itself (FORMAT AvroConfluent, resolving the
    # ids through the registry) and gets the values we decode.
    records = await read_all(settings, settings.topics.status.name, 2)
    path = chdb_path.parent / f"status-{unique}.bin"
    path.write_bytes(b"".join(r.value for r in records))
    engine = EmbeddedClickHouse.open(chdb_path, f"ac_{unique}")
    rows = engine.query(
        f"SELECT event_id, inbox_id, state, reason, toUnixTimestamp64Milli(at) AS at_ms "
        f"FROM file('{path}', 'AvroConfluent') "
        f"SETTINGS format_avro_schema_registry_url = '{url}'"
    )
    serde = serde_for(StatusEvent)
    want = [serde.decode(r.value, r.headers) for r in records]
    assert [(r["event_id"], r["inbox_id"], r["state"], r["reason"]) for r in rows] == [
        (e.event_id, e.inbox_id, e.state, e.reason) for e in want
    ]
    assert {int(r["at_ms"]) for r in rows} == {int(now.timestamp() * 1000)}

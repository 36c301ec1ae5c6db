"""Our Avro schemas in a schema registry with Confluent's REST API (Apicurio Registry here).

Each topic's schemas are registered under the topic-name strategy's subject, ``<topic>-value``,
with BACKWARD compatibility set on the subject first, every version on disk in order (v1,
v2, ...), so the subject's history is ours and the registry refuses a new version that old
readers' data could not be read with. Registering is idempotent (the same schema gives the
same id), so every process does it when it ensures its topics; the ids it gets back frame the
values it writes (schemas/serde.py ``WIRE``). An id a process did not register itself is
fetched once (``GET /schemas/ids/<id>``) and kept.

``kafka.schema_registry_url`` names the registry; unset, values are bare Avro datums named
only by our headers, as before there was a registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from inboxstream.core.settings import KafkaSettings, TopicSettings, TopicSpec
from inboxstream.errors import InboxstreamError
from inboxstream.schemas.serde import WIRE, default_registry

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
TIMEOUT_S = 10.0
#: Which schema each Avro topic carries (``TopicSettings`` field -> schema name). The
#: dead-letter topic keeps other topics' records as they were; the registry topic is JSON.
TOPIC_SCHEMAS: dict[str, str] = {
    "messages": "inbox.messages",
    "bodies": "inbox.bodies",
    "status": "inbox.status",
    "crm_outbound": "crm.outbound",
    "threads": "inbox.threads",
    "engagements": "crm.engagements",
    "checkpoints": "inbox.checkpoints",
}


class SchemaRegistryError(InboxstreamError):
    """The schema registry refused a request."""

    kind = "schema_registry"


class SchemaRegistryUnavailableError(SchemaRegistryError):
    """The schema registry cannot be reached."""

    retriable = True


class IncompatibleSchemaError(SchemaRegistryError):
    """A schema version breaks the subject's compatibility rule (BACKWARD)."""


def subject_for(topic: str) -> str:
    """The topic-name strategy's subject of a topic's values."""
    return f"{topic}-value"


def schema_topics(topics: TopicSettings, specs: Sequence[TopicSpec]) -> dict[str, str]:
    """topic name -> schema name, for the Avro topics among ``specs``."""
    wanted = {s.name for s in specs}
    out: dict[str, str] = {}
    for field, schema in TOPIC_SCHEMAS.items():
        spec: TopicSpec = getattr(topics, field)
        if spec.name in wanted:
            out[spec.name] = schema
    return out


#: (registry url, subject) pairs this process has registered: a process ensures its topics
#: many times, the registry hears about each subject once.
_registered: set[tuple[str, str]] = set()


def configure(settings: KafkaSettings) -> None:
    """Let readers resolve schema ids through the settings' registry (idempotent)."""
    url = settings.schema_registry_url
    if url is None or getattr(WIRE.fetch, "url", None) == url:
        return
    WIRE.fetch = _Fetcher(url)


class _Fetcher:
    """``GET /schemas/ids/<id>``, synchronously: it runs once per unknown id per process, in
    the middle of a decode."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, schema_id: int) -> str:
        try:
            response = httpx.get(f"{self.url}/schemas/ids/{schema_id}", timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailableError(
                f"schema registry {self.url} cannot be reached: {type(exc).__name__}"
            ) from None
        body = _json(response)
        if response.status_code != 200 or not isinstance(body.get("schema"), str):
            raise SchemaRegistryError(
                f"schema registry has no schema id {schema_id}: {_message(response, body)}"
            )
        schema: str = body["schema"]
        return schema


async def register_schemas(
    settings: KafkaSettings, topics: TopicSettings, specs: Sequence[TopicSpec]
) -> dict[str, list[int]]:
    """Register every version of each Avro topic's schema under ``<topic>-value`` with
    BACKWARD compatibility; subject -> the ids of its versions, oldest first."""
    url = settings.schema_registry_url
    if url is None:
        return {}
    configure(settings)
    registry = default_registry()
    done: dict[str, list[int]] = {}
    todo = {
        topic: schema
        for topic, schema in schema_topics(topics, specs).items()
        if (url, subject_for(topic)) not in _registered
    }
    if not todo:
        return done
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:
        for topic, schema in todo.items():
            subject = subject_for(topic)
            await _call(client, "PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})
            ids = []
            for version in registry.versions(schema):
                schema_id = await _register(client, subject, version.text)
                WIRE.learn(version, schema_id)
                ids.append(schema_id)
            done[subject] = ids
            _registered.add((url, subject))
            log.info("schema registry: %s has versions with ids %s", subject, ids)
    return done


async def register_schema(settings: KafkaSettings, subject: str, text: str) -> int:
    """Register one schema text under a subject; its id. ``IncompatibleSchemaError`` when the
    subject's compatibility rule refuses it."""
    if settings.schema_registry_url is None:
        raise SchemaRegistryError("no schema registry is configured (kafka.schema_registry_url)")
    async with httpx.AsyncClient(base_url=settings.schema_registry_url, timeout=TIMEOUT_S) as c:
        return await _register(c, subject, text)


async def _register(client: httpx.AsyncClient, subject: str, text: str) -> int:
    body = await _call(client, "POST", f"/subjects/{subject}/versions", {"schema": text})
    schema_id = body.get("id")
    if not isinstance(schema_id, int):
        raise SchemaRegistryError(f"registering {subject} gave no schema id: {body}")
    return schema_id


async def _call(
    client: httpx.AsyncClient, method: str, path: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """One request; a conflict with another process creating the same subject at the same
    moment ("already exists": every component registers at start) is asked again."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            return await _call_once(client, method, path, payload)
        except _CreateConflictError:
            await asyncio.sleep(0.05 * (attempt + 1))
    return await _call_once(client, method, path, payload)


_CONFLICT_RETRIES = 10


class _CreateConflictError(SchemaRegistryError):
    """Two processes created the same subject at once; the loser asks again."""


async def _call_once(
    client: httpx.AsyncClient, method: str, path: str, payload: dict[str, Any]
) -> dict[str, Any]:
    try:
        response = await client.request(
            method, path, json=payload, headers={"Content-Type": CONTENT_TYPE}
        )
    except httpx.HTTPError as exc:
        raise SchemaRegistryUnavailableError(
            f"schema registry {client.base_url} cannot be reached ({type(exc).__name__}); is "
            "it running? (inboxstream infra start schema_registry, or set "
            "INBOXSTREAM_KAFKA__SCHEMA_REGISTRY_URL)"
        ) from None
    body = _json(response)
    if response.status_code == 409 and "already exists" in str(body.get("message", "")):
        raise _CreateConflictError(_message(response, body))
    if response.status_code == 409:
        raise IncompatibleSchemaError(
            f"schema registry refused {path}: not BACKWARD compatible with the registered "
            f"versions: {_message(response, body)}"
        )
    if response.status_code >= 500:
        raise SchemaRegistryUnavailableError(
            f"schema registry answered {response.status_code} to {path}: {_message(response, body)}"
        )
    if response.status_code >= 300:
        raise SchemaRegistryError(f"schema registry refused {path}: {_message(response, body)}")
    return body


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response, body: dict[str, Any]) -> str:
    message = body.get("message") or response.text[:200] or f"HTTP {response.status_code}"
    return " ".join(str(message).split())[:500]

"""The project's contracts, each stated once: how long things live, how big mail may be, and
which event model travels on which topic and lands in which table.

Everything else reads these: the topic retention defaults (``core.settings``), the
processor's event-time retention (``processors.retention``), the sinks' purge job
(``sinks.retention``), the producers' attachment limit and the sender's size check. The SQL
TTLs cannot import Python, so a test (tests/unit/core/test_contracts.py) reads every
migration and fails when a TTL disagrees with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from inboxstream.schemas.models import (
    BodyEvent,
    EngagementEvent,
    Event,
    MessageEvent,
    OutboundEvent,
    StatusEvent,
    ThreadEvent,
)

if TYPE_CHECKING:
    from inboxstream.core.settings import TopicSettings, TopicSpec

DAY_MS = 24 * 3600 * 1000
HOUR_MS = DAY_MS // 24

# --- retention, from the source documents (days) --------------------------------------------
#: Bodies: inbox.bodies, processor state, the ``bodies`` table ("bodies 7 days").
BODY_RETENTION_DAYS = 7
#: Message metadata, threads and inbox status: topics, the thread index and the tables.
METADATA_RETENTION_DAYS = 60
#: A deleted engagement is purged everywhere within this ("purged within 90 days").
DELETED_ENGAGEMENT_PURGE_DAYS = 90
#: A reply processed before the CRM record of the mail it answers is held this long (ours,
#: not the documents': 24 h covers a CRM that logs its sends late, far inside 7 days).
REPLY_HOLD_DAYS = 1
#: Poison records stay in the dead-letter topic this long for someone to look at.
DEAD_LETTER_RETENTION_DAYS = 30

# --- sizes -------------------------------------------------------------------------------
#: "Attachments are logged when the whole email is under 50 MB"; the sender refuses larger
#: mail before reading its attachments.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
#: The largest event value we send: under Kafka's default 1 MiB request and message size, with
#: room for the record's key and headers (mail/limits.py keeps parsed mail well under it).
MAX_EVENT_BYTES = 1_000_000


def days_ms(days: int) -> int:
    return days * DAY_MS


# --- topics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicContract:
    """One public topic: its event model, the ``TopicSettings`` field that names it, and the
    ClickHouse table its sink writes (None: no table)."""

    model: type[Event]
    setting: str
    table: str | None

    def spec(self, topics: TopicSettings) -> TopicSpec:
        spec: TopicSpec = getattr(topics, self.setting)
        return spec


#: The registry: event type <-> model <-> topic setting <-> table.
TOPICS: tuple[TopicContract, ...] = (
    TopicContract(MessageEvent, "messages", "email_metadata"),
    TopicContract(BodyEvent, "bodies", "bodies"),
    TopicContract(StatusEvent, "status", "inbox_status"),
    TopicContract(OutboundEvent, "crm_outbound", "crm_outbound"),
    TopicContract(ThreadEvent, "threads", "threads"),
    TopicContract(EngagementEvent, "engagements", "engagements"),
)


def contract_for(model: type[Event]) -> TopicContract:
    """The topic contract of an event model (its topic and table)."""
    for contract in TOPICS:
        if issubclass(model, contract.model):
            return contract
    raise TypeError(f"no topic carries {model.__name__}")


def topic_for(topics: TopicSettings, model: type[Event]) -> str:
    """The configured name of the topic that carries ``model``."""
    return contract_for(model).spec(topics).name

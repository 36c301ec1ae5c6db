"""The processor's topics: inputs, outputs, internal topics, and how an output version renames.

Co-partitioning: ``inbox.messages`` and ``inbox.bodies`` are keyed by inbox id, so one inbox
lives in one partition number of both. ``crm.outbound`` is keyed by the CRM's Message-ID and may
carry an ``inbox_id``. The processor re-keys it into the internal topic
``<prefix>processor.crm-by-inbox``: a record with ``inbox_id`` goes to that inbox's partition
(key = inbox id, the same default partitioner as the inbox producers); a record without one
(mail logged for no particular inbox) is broadcast to every partition. Each partition's owner
then holds exactly the CRM Message-IDs its inboxes can reply to, and the re-keying happens in
the same transaction as everything else. All of them must have the same partition count; the
processor checks that at start.

Replay writes into a new *version*: outputs get a ``.<version>`` suffix and the internal topics
a ``processor-<version>.`` prefix, so the first run's outputs and state stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from inboxstream.core.settings import TopicSettings, TopicSpec
from inboxstream.processors.state import STORES


@dataclass(frozen=True)
class ProcessorTopics:
    messages: str
    bodies: str
    crm_outbound: str
    crm_by_inbox: str
    engagement_deletes: str
    threads: str
    engagements: str
    dead_letter: str
    changelogs: dict[str, str]
    specs: tuple[TopicSpec, ...]

    @property
    def inputs(self) -> tuple[str, ...]:
        return (
            self.messages,
            self.bodies,
            self.crm_outbound,
            self.crm_by_inbox,
            self.engagement_deletes,
        )

    @classmethod
    def build(cls, topics: TopicSettings, version: str = "") -> ProcessorTopics:
        prefix = topics.internal_prefix
        internal = f"{prefix}processor{'-' + version if version else ''}."
        suffix = f".{version}" if version else ""
        changelogs = {store: f"{internal}{store}-changelog" for store in STORES}
        threads = topics.threads.model_copy(update={"name": topics.threads.name + suffix})
        engagements = topics.engagements.model_copy(
            update={"name": topics.engagements.name + suffix}
        )
        crm_by_inbox = TopicSpec(name=f"{internal}crm-by-inbox", retention_ms=-1)
        deletes = TopicSpec(name=f"{prefix}crm.engagement-deletes", retention_ms=-1)
        specs = (
            topics.messages,
            topics.bodies,
            topics.crm_outbound,
            topics.dead_letter,
            threads,
            engagements,
            crm_by_inbox,
            deletes,
            *(TopicSpec(name=t, retention_ms=-1, compacted=True) for t in changelogs.values()),
        )
        return cls(
            messages=topics.messages.name,
            bodies=topics.bodies.name,
            crm_outbound=topics.crm_outbound.name,
            crm_by_inbox=crm_by_inbox.name,
            engagement_deletes=deletes.name,
            threads=threads.name,
            engagements=engagements.name,
            dead_letter=topics.dead_letter.name,
            changelogs=changelogs,
            specs=specs,
        )

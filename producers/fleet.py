"""Inbox leases through Kafka's group membership: a fleet of producer processes, each inbox
owned by exactly one of them at a time.

Every producer process joins one consumer group (``producer.fleet_group``) on the registry
topic (``producers.registry_topic``). The partitions the group gives a process are its lease:
it syncs the inboxes registered on those partitions and no others. Kafka's group protocol
then does what a lease service would:

* **Hand-over is stop-then-start.** aiokafka rebalances eagerly: before a member rejoins, its
  ``on_partitions_revoked`` runs, and here that stops every inbox of the revoked partitions
  (connections closed, the last acked batch checkpointed) and waits until they are stopped.
  The group hands partitions out only when every member has rejoined, so the next owner opens
  its connections after the old owner closed its own: the five-connection rule holds across
  the fleet, during a rebalance too.
* **A dead process loses its lease.** One that stops heart-beating (kill -9, a frozen host) is
  dropped after ``fleet_session_timeout_ms``; its partitions go to the others, which resume
  each inbox from its checkpoint in Kafka: nothing lost, and what is sent again carries its
  old ``event_id``.
* **A clean stop leaves at once.** ``stop`` leaves the group, so the others take over without
  waiting for the session timeout.

A newly assigned partition is read from its beginning to the end offset it had at assignment
before its inboxes count (``owned``): a removal (tombstone) later in the partition must not
start the inbox for a moment. Records that come later (``inbox add``/``remove`` at run time)
are applied as they arrive. Nothing is committed: every assignment reads its partitions
afresh, which is cheap (one small record per inbox).

Assignment is sticky (aiokafka's ``StickyPartitionAssignor``): a membership change moves as
few partitions as it can, and counts stay balanced. Eager rebalancing still stops every inbox
of a process for the moment of the rebalance (the revoke cannot know which partitions come
back); they restart from their in-memory checkpoints through the connect gate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from inboxstream.core.kafka import ensure_topics, make_consumer
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.core.vault import SecretBox
from inboxstream.producers.registry_topic import RegistryView

log = logging.getLogger(__name__)

#: Called with the inbox ids a revocation takes away; returns when they are stopped.
OnRevoked = Callable[[set[str]], Awaitable[None]]


@dataclass
class InboxLeases:
    """This process's share of the fleet's inboxes (module docstring)."""

    settings: Settings
    box: SecretBox
    on_revoked: OnRevoked
    #: set whenever the owned inboxes changed (an assignment loaded, a record applied)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: the records of the partitions held, read as ``inbox list`` reads the topic
    _view: RegistryView = field(default_factory=RegistryView, init=False)
    _held: set[int] = field(default_factory=set, init=False)
    #: partition -> the end offset to read to before its inboxes count (-1: not known yet)
    _loading: dict[int, int] = field(default_factory=dict, init=False)
    _consumer: AIOKafkaConsumer | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def topic(self) -> str:
        return self.settings.topics.registry.name

    def owned(self) -> dict[str, InboxSettings]:
        """The inboxes this process should sync now: those of its loaded partitions."""
        return {
            inbox_id: inbox
            for inbox_id, (partition, inbox) in self._view.inboxes.items()
            if partition in self._held and partition not in self._loading
        }

    async def start(self) -> None:
        p = self.settings.producer
        await ensure_topics(
            self.settings.kafka, self.settings.topics, [self.settings.topics.registry]
        )
        consumer = make_consumer(
            self.settings.kafka,
            group_id=p.fleet_group,
            partition_assignment_strategy=(StickyPartitionAssignor,),
            session_timeout_ms=p.fleet_session_timeout_ms,
            heartbeat_interval_ms=min(3_000, p.fleet_session_timeout_ms // 3),
            # Stopping a revoked share of inboxes must finish inside the rebalance.
            rebalance_timeout_ms=120_000,
            max_poll_interval_ms=300_000,
        )
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._consumer = consumer
        self._task = asyncio.create_task(self._poll(), name="fleet-leases")

    async def stop(self) -> None:
        """Leave the group (the others take over at once). Call after the inboxes stopped."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        self._held.clear()

    async def _poll(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker hiccup: the group keeps us; try again
                log.warning("fleet: reading the registry topic failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            touched = False
            for tp, records in batch.items():
                if tp.partition not in self._held:
                    continue  # revoked meanwhile
                for rec in records:
                    touched = True
                    skipped = self._view.apply(rec.partition, rec.key, rec.value, self.box)
                    if skipped is not None:
                        log.warning("fleet: skipping inbox %r: %s", rec.key, skipped)
            for partition, end in list(self._loading.items()):
                if end < 0:
                    continue
                try:
                    position = await consumer.position(TopicPartition(self.topic, partition))
                except Exception:  # noqa: BLE001 - revoked meanwhile: nothing to load
                    continue
                if position >= end and self._loading.get(partition) == end:
                    del self._loading[partition]
                    touched = True
            if touched:
                self.changed.set()

    async def _revoked(self, partitions: set[int]) -> None:
        self._held -= partitions
        for p in partitions:
            self._loading.pop(p, None)
        gone = self._view.drop(partitions)
        if gone:
            log.info("fleet: %d inbox(es) of partitions %s revoked", len(gone), sorted(partitions))
        await self.on_revoked(gone)  # stopped before we rejoin: see the module docstring

    async def _assigned(self, partitions: set[int]) -> None:
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return
        # Before any await: the fetcher starts on a new assignment at once, and the poll loop
        # must apply (not drop) what it brings; -1 = the end to reach is not known yet.
        for tp in tps:
            self._held.add(tp.partition)
            self._loading[tp.partition] = -1
        await self._consumer.seek_to_beginning(*tps)  # nothing is committed: read it all
        ends = await self._consumer.end_offsets(tps)
        for tp in tps:
            if tp.partition in self._loading:  # not revoked meanwhile
                self._loading[tp.partition] = ends[tp]
        log.info("fleet: holding registry partitions %s", sorted(partitions))
        self.changed.set()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, leases: InboxLeases) -> None:
        self.leases = leases

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.leases._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.leases._assigned({tp.partition for tp in assigned})

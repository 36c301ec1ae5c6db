"""Sending many records as record batches we fill ourselves, not one ``producer.send`` each.

``AIOKafkaProducer.send`` costs more per record than the work that made the record on our hot
paths (a pure-Python murmur2 of the key, a future and an accumulator lookup each). Both the
backfill (``producers.publish``) and the stream processor (``processors.processor``) send
thousands of records a second, so they group them by topic and partition, in order, into
batches from ``create_batch`` and hand each to ``send_batch``: the same partitions (the default
partitioner's for a keyed record), the same order within a partition, the same headers as one
``send`` per record. Inside a transaction too: aiokafka adds each batch's partition to the
open transaction as ``send`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

Headers = Sequence[tuple[str, bytes]]
#: One record to send: topic, partition (None: the key's, as ``send`` picks it), key, value,
#: headers.
Outgoing = tuple[str, int | None, bytes | None, bytes | None, Headers]

#: Fewer records than this for one partition go through ``send`` (see ``send_all``).
SMALL_GROUP = 16

#: What ``producer.send`` uses for a keyed record: murmur2 of the key over all partitions.
_PARTITIONER = DefaultPartitioner()


class BatchSender:
    """Sends records through one producer in ready-made batches (module docstring)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        partitions: dict[tuple[str, bytes | None], int] | None = None,
    ) -> None:
        self.producer = producer
        # (topic, key) -> partition; may be shared by senders of one cluster
        self._partitions = partitions if partitions is not None else {}

    async def partition_of(self, topic: str, key: bytes | None) -> int:
        """The partition ``send`` would give a record with this key (cached)."""
        cached = self._partitions.get((topic, key))
        if cached is None:
            partitions = list(await self.producer.partitions_for(topic))  # as send() lists them
            cached = _PARTITIONER(key, partitions, partitions)
            self._partitions[(topic, key)] = cached
        return cached

    async def send_all(self, records: Iterable[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue ``records``; await the returned futures for the broker's acks."""
        by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers]]] = {}
        for topic, partition, key, value, headers in records:
            if partition is None:
                partition = await self.partition_of(topic, key)
            # the C batch builder takes headers as a list only
            listed = headers if isinstance(headers, list) else list(headers)
            by_tp.setdefault((topic, partition), []).append((key, value, listed))
        futures: list[asyncio.Future[object]] = []
        for (topic, partition), group in by_tp.items():
            if len(group) < SMALL_GROUP:
                # A few records (a live message of one of many inboxes) go through ``send``:
                # they join the partition's open batch with everyone else's. A batch of our
                # own for each would be its own produce round trip (aiokafka drains one batch
                # per partition per request), and a thousand inboxes' live mail queued a
                # thousand of them: 14 s p50 delivery and batches expiring unsent.
                for key, value, headers in group:
                    futures.append(
                        await self.producer.send(
                            topic, value, key=key, partition=partition, headers=headers
                        )
                    )
                continue
            batch = self.producer.create_batch()
            for key, value, headers in group:
                if batch.append(key=key, value=value, timestamp=None, headers=headers):
                    continue
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = self.producer.create_batch()  # the first record always fits
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            if batch.record_count():
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures

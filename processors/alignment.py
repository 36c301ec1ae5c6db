"""Keeping a partition's messages and bodies in step across batches.

A message and its body are two records of the same input partition number, one in
inbox.messages and one in inbox.bodies, sent one after the other by the producer. The record
path is cheapest when both come in the same share: a body that comes first is held in the
pending store (a changelog write) and released when its message comes (another), and a reply
whose message comes first is held until its body does.

aiokafka's ``getmany`` drains the partitions it holds records of one after the other, and one
fetch of a partition brings thousands of records, so a batch is often one topic only (a run of
5,000 messages was one batch of every body, then one of every message). Kafka Streams keeps
the inputs of a task in step by picking the record with the lowest timestamp across them, and
by waiting (``max.task.idle.ms``) while an input that has more to read has nothing buffered.

``in_step`` does the same per batch: where one topic's records run later than the last record
of the other topic of the same partition, and that other topic has more to read, the later
records are held back, not sent back to the broker. The processor prepends them to its next
batch, so nothing fetched is fetched again and batches keep their size. Only whole suffixes
are held, so each topic partition's records stay in offset order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from aiokafka import TopicPartition


class Timestamped(Protocol):
    @property
    def timestamp(self) -> int: ...


R = TypeVar("R", bound=Timestamped)


def in_step(
    batch: Mapping[TopicPartition, Sequence[R]],
    first: str,
    second: str,
    more_to_read: Callable[[TopicPartition], bool],
) -> tuple[dict[TopicPartition, list[R]], dict[TopicPartition, list[R]]]:
    """``batch`` split into (what to process now, what to hold for the next batch).

    For each partition number with records of ``first`` or ``second`` in ``batch``, a topic
    whose partition has more to read (``more_to_read``) sets a frontier at the timestamp of
    its last record here (nothing here: before everything); the other topic's records later
    than that frontier are held, from the first such record on. A topic with nothing more to
    read sets no frontier, so nothing waits for what will not come. Records of other topics
    pass through."""
    now: dict[TopicPartition, list[R]] = {}
    held: dict[TopicPartition, list[R]] = {}
    for tp, records in batch.items():
        if records:
            now[tp] = list(records)
    partitions = {tp.partition for tp in now if tp.topic in (first, second)}
    for p in partitions:
        a, b = TopicPartition(first, p), TopicPartition(second, p)
        # how late each topic's records may be: the other topic's frontier (None: no limit)
        limit = {a: _frontier(batch, b, more_to_read), b: _frontier(batch, a, more_to_read)}
        for tp, bound in limit.items():
            kept = now.get(tp)
            if not kept or bound is None:
                continue
            cut = next((i for i, r in enumerate(kept) if r.timestamp > bound), None)
            if cut is None:
                continue
            held[tp] = kept[cut:]
            if cut:
                now[tp] = kept[:cut]
            else:
                del now[tp]
    return now, held


#: A frontier before every timestamp (a topic with more to read and nothing in the batch).
BEFORE_ALL = -(2**63)


def _frontier(
    batch: Mapping[TopicPartition, Sequence[R]],
    tp: TopicPartition,
    more_to_read: Callable[[TopicPartition], bool],
) -> int | None:
    if not more_to_read(tp):
        return None
    records = batch.get(tp)
    return records[-1].timestamp if records else BEFORE_ALL


def cap(
    ready: dict[TopicPartition, list[R]], held: dict[TopicPartition, list[R]], limit: int
) -> tuple[dict[TopicPartition, list[R]], dict[TopicPartition, list[R]]]:
    """``ready`` cut to about ``limit`` records at one timestamp across its partitions (so
    what stays stays in step), the rest put in front of ``held``. Where timestamps tie at the
    cut, it keeps them all rather than nothing: ``limit`` is then exceeded."""
    total = sum(len(records) for records in ready.values())
    if total <= limit or limit <= 0:
        return ready, held
    stamps = sorted(r.timestamp for records in ready.values() for r in records)
    bound = stamps[limit - 1]
    if stamps[limit] == bound and stamps[0] < bound:
        bound -= 1  # keep under the tie rather than over it
    now: dict[TopicPartition, list[R]] = {}
    later = dict(held)
    for tp, records in ready.items():
        cut = next((i for i, r in enumerate(records) if r.timestamp > bound), len(records))
        if cut:
            now[tp] = records[:cut]
        if cut < len(records):
            later[tp] = records[cut:] + held.get(tp, [])
    return now, later

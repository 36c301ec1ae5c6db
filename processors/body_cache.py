"""The inbox.bodies records a partition's state points at, kept in memory within a byte budget.

State never holds a body, only the offset of a held reply's body (``Held.body_at``), and an
engagement decided after the body went by reads it back from inbox.bodies. When a processor
catches up on a backlog, or a CRM record is re-keyed to its inbox's partition one transaction
after the replies it matches, nearly every engagement is such a read: bench/processor.py
50000 read all 13,336 of its engagement bodies back, which fetched and decoded the bodies
topic a second time (the reads run through nearby offsets) in the engine process and the
broker, beside the work the benchmark measures.

So the record path keeps the records whose offsets state holds, oldest dropped first past the
budget, and a read takes its record from here before it goes to Kafka. The result is the same
either way: a record at an offset never changes, and a miss (evicted, or a restart, or an
aborted transaction's redo: a read takes its record out) reads the topic as before. It is a
cache only: never written to a changelog, an output or a log, and the bodies of replies that
never engage leave it as newer ones come in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from inboxstream.core.batches import Headers

#: The default budget: 64 MB of record values per record path (each engine process).
BODY_CACHE_BYTES = 64 * 1024 * 1024
#: What one entry costs beside its value's bytes (the key, the entry, the headers' tuples).
ENTRY_OVERHEAD = 200


class BodyCache:
    """inbox.bodies records (value and headers) by (partition, offset); oldest out first."""

    def __init__(self, budget: int = BODY_CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self.evicted = 0
        self._records: OrderedDict[tuple[int, int], tuple[bytes | None, Headers]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def _size(value: bytes | None) -> int:
        return (len(value) if value is not None else 0) + ENTRY_OVERHEAD

    def put(self, partition: int, offset: int, value: bytes | None, headers: Headers) -> None:
        """Keep one record; past the budget, drop the oldest. A record larger than the whole
        budget is not kept (its read goes to Kafka)."""
        size = self._size(value)
        key = (partition, offset)
        if size > self.budget or key in self._records:
            return
        self._records[key] = (value, headers)
        self.used += size
        while self.used > self.budget:
            _, (old, _) = self._records.popitem(last=False)
            self.used -= self._size(old)
            self.evicted += 1

    def take(self, partition: int, offset: int) -> tuple[bytes | None, Headers] | None:
        """The record at ``offset``, removed (an engagement reads its body once); None when
        it is not here."""
        found = self._records.pop((partition, offset), None)
        if found is not None:
            self.used -= self._size(found[0])
        return found

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the records of partitions this process no longer holds."""
        gone = set(partitions)
        for key in [key for key in self._records if key[0] in gone]:
            value, _ = self._records.pop(key)
            self.used -= self._size(value)

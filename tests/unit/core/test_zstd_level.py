"""aiokafka's record batches are compressed at ``aiokafka_shim.ZSTD_LEVEL``, not its level 3."""

from __future__ import annotations

import asyncio

import cramjam
from aiokafka import AIOKafkaProducer

from inboxstream.core import aiokafka_shim

HEADER = 61  # bytes of a v2 record batch before its (compressed) records


def _batch(compression: str | None) -> bytes:
    async def build() -> bytes:
        # never started: no broker
        producer = AIOKafkaProducer(compression_type=compression, max_batch_size=1 << 20)
        batch = producer.create_batch()
        for i in range(500):
            value = b"Re: Quarterly planning <m%d.onethread@inboxstream.test> " % i
            assert batch.append(key=b"inbox", value=value * 4, timestamp=1, headers=[])
        return bytes(batch._build())  # what the sender puts on the wire

    return asyncio.run(build())


def test_batches_are_compressed_at_our_level_and_read_back() -> None:
    records = _batch(None)[HEADER:]
    ours = bytes(cramjam.zstd.compress(records, level=aiokafka_shim.ZSTD_LEVEL))
    theirs = bytes(cramjam.zstd.compress(records, level=3))
    assert ours != theirs  # the payload tells the two levels apart
    compressed = _batch("zstd")[HEADER:]
    assert compressed == ours
    assert bytes(cramjam.zstd.decompress(compressed)) == records


def test_an_explicit_level_still_wins() -> None:
    """aiokafka's codec signature (``level=None``) is kept: a caller naming a level gets it."""
    from aiokafka.record import default_records

    payload = _batch(None)[HEADER:]
    encode = default_records.zstd_encode
    assert encode(payload, 3) != encode(payload)
    assert encode(payload, 3) == bytes(cramjam.zstd.compress(payload, level=3))
    assert encode(payload) == bytes(cramjam.zstd.compress(payload, level=aiokafka_shim.ZSTD_LEVEL))

"""The Prometheus metrics of the producer, the processor and the sink (``prometheus-client``).

One set per process, in prometheus-client's default registry; core/ops_server.py serves them
at ``/metrics`` on a loopback port with ``/healthz`` and ``/readyz``. The names, labels and
what each counts are listed in the README ("Operations"). Labels stay bounded: per inbox
(a process's share of the fleet), per topic, per table, per partition, per error kind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Enum, Gauge, Histogram

log = logging.getLogger(__name__)

#: Records per batch: a FETCH batch of the producer, a transaction of the processor, a flush
#: of the sink.
_RECORD_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

INBOX_STATE = Enum(
    "inboxstream_inbox_state",
    "The inbox's latest state, as published on inbox.status",
    ["inbox"],
    states=["connected", "syncing", "idle", "disconnected", "resync"],
)
INBOX_CONNECTIONS = Gauge(
    "inboxstream_inbox_connections",
    "IMAP/SMTP connections the inbox holds now (at most 5)",
    ["inbox"],
)
INBOX_MESSAGES = Counter(
    "inboxstream_inbox_messages_published_total",
    "Messages of the inbox published to Kafka and acknowledged",
    ["inbox"],
)
PUBLISHED_RECORDS = Counter(
    "inboxstream_published_records_total", "Records handed to Kafka, by topic", ["topic"]
)
PUBLISHED_BYTES = Counter(
    "inboxstream_published_bytes_total", "Value bytes handed to Kafka, by topic", ["topic"]
)
ERRORS = Counter(
    "inboxstream_errors_total",
    "Failures, by component and kind (auth, tls, connect, decode, clickhouse, ...)",
    ["component", "kind"],
)
BATCH_RECORDS = Histogram(
    "inboxstream_batch_records",
    "Records per batch: producer FETCH batches, processor transactions, sink flushes",
    ["component"],
    buckets=_RECORD_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "inboxstream_batch_seconds",
    "Time per batch: producer fetch to acknowledged, processor transaction, sink insert+commit",
    ["component"],
    buckets=_SECOND_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "inboxstream_consumer_lag",
    "Records behind the partition's end (high watermark) after the last fetch",
    ["group", "topic", "partition"],
)
TRANSACTIONS = Counter(
    "inboxstream_transactions_total",
    "Processor transactions by result (committed, aborted, fenced)",
    ["result"],
)
ROWS_INSERTED = Counter(
    "inboxstream_rows_inserted_total", "Rows the sink inserted into ClickHouse", ["table"]
)
DEAD_LETTERS = Counter(
    "inboxstream_dead_letters_total",
    "Records sent to the dead-letter topic, by source topic and stage",
    ["topic", "stage"],
)


def error_kind(exc: BaseException) -> str:
    """Our errors name their kind; anything else is its class name."""
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) else type(exc).__name__


def observe_lag(
    group: str, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[object]]
) -> None:
    """Lag of each partition a fetch brought records of: high watermark minus the offset after
    the last record (what is left to read). Partitions without records keep their last value."""
    try:
        for tp, records in batch.items():
            if not records:
                continue
            highwater = consumer.highwater(tp)
            last = getattr(records[-1], "offset", None)
            if highwater is None or last is None:
                continue
            lag = max(0, highwater - last - 1)
            CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag)
    except Exception:  # noqa: BLE001 - a metric must never stop the work it measures
        log.debug("consumer lag not measured", exc_info=True)


def forget_inbox(inbox_id: str) -> None:
    """Drop an inbox's series when it leaves this process (removed, or leased elsewhere)."""
    for metric in (INBOX_STATE, INBOX_CONNECTIONS, INBOX_MESSAGES):
        try:
            metric.remove(inbox_id)
        except KeyError:
            pass

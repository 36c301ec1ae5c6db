-- Triage metadata from the headers of every message in every connected inbox (no bodies).
--
-- ReplacingMergeTree(version) keyed by event_id: the sink is at-least-once, so a redelivered or
-- replayed event lands again with the same key and collapses at merge time; queries that must
-- not double-count read with FINAL (or argMax by version).
-- ORDER BY starts with inbox_id because nearly every question is per inbox; then received_at,
-- so per-day scans of one inbox read a contiguous range; event_id last makes the key unique.
-- Daily partitions on received_at let the 60-day TTL drop whole parts instead of rewriting them.
CREATE TABLE IF NOT EXISTS {db}.email_metadata
(
    event_id String,
    event_type LowCardinality(String),
    inbox_id LowCardinality(String),
    folder LowCardinality(String),
    folder_role LowCardinality(String),
    uidvalidity UInt64,
    uid UInt64,
    modseq Nullable(UInt64),
    message_id String,
    message_id_synthetic Bool,
    in_reply_to Array(String),
    references Array(String),
    subject String,
    from_email String,
    from_name String,
    from_domain LowCardinality(String) MATERIALIZED lower(arrayElement(splitByChar('@', from_email), -1)),
    to_emails Array(String),
    cc_emails Array(String),
    date Nullable(DateTime64(3, 'UTC')),
    internal_date Nullable(DateTime64(3, 'UTC')),
    received_at DateTime64(3, 'UTC'),
    size UInt64,
    flags Array(String),
    has_attachments Bool,
    raw_headers String,
    parse_error Nullable(String),
    observed_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (inbox_id, received_at, event_id)
TTL toDateTime(received_at) + INTERVAL 60 DAY DELETE
SETTINGS ttl_only_drop_parts = 1;

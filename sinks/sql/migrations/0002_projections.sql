-- The other projections: bodies, threads, engagements, inbox status and the CRM's outbound mail.
--
-- Every table is a ReplacingMergeTree(version) whose ORDER BY ends in the idempotency key, so a
-- redelivered or replayed event collapses onto its earlier copy; queries read with FINAL (or
-- argMax by version). `version` is the event time in milliseconds, so the newest state of an
-- entity wins whatever order the events arrive in. `inserted_at` is when the row landed: the
-- last hop of the sync-lag measurement (server date -> event observed_at -> row inserted_at).

-- Decoded bodies and attachment metadata: 7 days (the provider purges every body after 7 days).
-- ORDER BY (inbox_id, message_id, event_id): bodies are looked up per inbox by Message-ID.
-- Daily partitions on received_at (the server's date) let the 7-day TTL drop whole parts; a
-- redelivered event has the same received_at, so both copies always sit in one partition.
CREATE TABLE IF NOT EXISTS {db}.bodies
(
    event_id String,
    inbox_id LowCardinality(String),
    folder LowCardinality(String),
    uidvalidity UInt64,
    uid UInt64,
    message_id String,
    text Nullable(String),
    html Nullable(String),
    attachment_filenames Array(String),
    attachment_content_types Array(String),
    attachment_sizes Array(UInt64),
    attachment_sha256 Array(String),
    attachments_logged Bool,
    attachments_skipped_reason Nullable(String),
    size UInt64,
    date Nullable(DateTime64(3, 'UTC')),
    internal_date Nullable(DateTime64(3, 'UTC')),
    received_at DateTime64(3, 'UTC'),
    parse_error Nullable(String),
    observed_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (inbox_id, message_id, event_id)
TTL toDateTime(received_at) + INTERVAL 7 DAY DELETE
SETTINGS ttl_only_drop_parts = 1;

-- Thread assignments and merges as the processors emit them (one row per event).
-- ORDER BY (inbox_id, thread_id, event_id): thread-length questions group by thread per inbox.
-- Derived from message metadata, so the same 60 days and daily partitions on the event time
-- (taken from the message event, so a replay lands in the same partition as the original).
CREATE TABLE IF NOT EXISTS {db}.threads
(
    event_id String,
    event_type LowCardinality(String),
    inbox_id LowCardinality(String),
    message_event_id String,
    message_id String,
    thread_id String,
    merged_thread_ids Array(String),
    root_message_id String,
    base_subject String,
    algorithm LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (inbox_id, thread_id, event_id)
TTL toDateTime(occurred_at) + INTERVAL 60 DAY DELETE
SETTINGS ttl_only_drop_parts = 1;

-- How queries read a merged thread: every message with the thread it belongs to *now*.
-- A thread.merged event folds merged_thread_ids into thread_id; an assignment to a folded
-- thread follows the merge. Chains (A into B, later B into C) are followed for two hops, which
-- covers a late message linking threads twice; the processors name the surviving thread.
CREATE VIEW IF NOT EXISTS {db}.thread_messages AS
SELECT
    a.inbox_id AS inbox_id,
    a.message_event_id AS message_event_id,
    a.message_id AS message_id,
    a.occurred_at AS occurred_at,
    a.thread_id AS assigned_thread_id,
    if(m2.into_id != '', m2.into_id, if(m1.into_id != '', m1.into_id, a.thread_id)) AS thread_id
FROM
(
    SELECT
        inbox_id,
        message_event_id,
        argMax(message_id, version) AS message_id,
        argMax(thread_id, version) AS thread_id,
        argMax(occurred_at, version) AS occurred_at
    FROM {db}.threads FINAL
    WHERE event_type = 'thread.assigned'
    GROUP BY inbox_id, message_event_id
) AS a
LEFT JOIN
(
    SELECT inbox_id, from_id, argMax(thread_id, version) AS into_id
    FROM {db}.threads FINAL
    ARRAY JOIN merged_thread_ids AS from_id
    WHERE event_type = 'thread.merged'
    GROUP BY inbox_id, from_id
) AS m1 ON m1.inbox_id = a.inbox_id AND m1.from_id = a.thread_id
LEFT JOIN
(
    SELECT inbox_id, from_id, argMax(thread_id, version) AS into_id
    FROM {db}.threads FINAL
    ARRAY JOIN merged_thread_ids AS from_id
    WHERE event_type = 'thread.merged'
    GROUP BY inbox_id, from_id
) AS m2 ON m2.inbox_id = m1.inbox_id AND m2.from_id = m1.into_id;

-- Engagements as an event log: one row per crm.engagements event (created, deleted,
-- body.expired), keyed (inbox_id, engagement_id, event_id) so all of one engagement's events
-- sit together and each event counts once. The current state is the engagements_current view.
--
-- Why not a TTL on deleted_at: a row-level TTL only sees its own row. Tried on chDB 26.9
-- (ReplacingMergeTree, TTL deleted_at + 90 DAY WHERE is_deleted): OPTIMIZE FINAL applied the
-- TTL to the "deleted" row before the replacing merge, and the older "created" row came back
-- to life. So the 90-day purge is a deletion by engagement id (sinks/retention.py, run by the
-- sink every hour and by `inboxstream db retention`), which removes every row of the
-- engagement at once. Engagements replying to sequence mail are never purged.
-- No partitioning: the table is small (replies to CRM mail only) and the purge is by id.
CREATE TABLE IF NOT EXISTS {db}.engagements
(
    event_id String,
    event_type LowCardinality(String),
    engagement_id String,
    inbox_id LowCardinality(String),
    message_id String,
    thread_id String,
    crm_message_id String,
    matched_by LowCardinality(String),
    crm_kind LowCardinality(String),
    crm_ref String,
    contact_email String,
    contact_name String,
    subject String,
    body_text Nullable(String),
    attachment_filenames Array(String),
    attachment_content_types Array(String),
    attachment_sizes Array(UInt64),
    attachment_sha256 Array(String),
    occurred_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (inbox_id, engagement_id, event_id);

-- One row per engagement: what it was when created, whether and when it was deleted, and the
-- body only while it has not expired. Analytics read this, never the raw event rows.
CREATE VIEW IF NOT EXISTS {db}.engagements_current AS
SELECT
    engagement_id,
    inbox_id,
    argMaxIf(message_id, version, event_type = 'engagement.created') AS message_id,
    argMaxIf(thread_id, version, event_type = 'engagement.created') AS thread_id,
    argMaxIf(crm_message_id, version, event_type = 'engagement.created') AS crm_message_id,
    argMaxIf(matched_by, version, event_type = 'engagement.created') AS matched_by,
    argMaxIf(crm_kind, version, event_type = 'engagement.created') AS crm_kind,
    argMaxIf(crm_ref, version, event_type = 'engagement.created') AS crm_ref,
    argMaxIf(contact_email, version, event_type = 'engagement.created') AS contact_email,
    argMaxIf(subject, version, event_type = 'engagement.created') AS subject,
    if(countIf(event_type = 'body.expired') > 0, NULL,
       argMaxIf(body_text, version, event_type = 'engagement.created')) AS body_text,
    minIf(occurred_at, event_type = 'engagement.created') AS replied_at,
    countIf(event_type = 'engagement.deleted') > 0 AS is_deleted,
    maxIf(occurred_at, event_type = 'engagement.deleted') AS deleted_at
FROM {db}.engagements FINAL
GROUP BY engagement_id, inbox_id
HAVING countIf(event_type = 'engagement.created') > 0;

-- Connection state changes: "which inboxes are disconnected and why", sync progress.
-- ORDER BY (inbox_id, at, event_id): the latest state of an inbox is the end of its range.
-- Monthly partitions (few rows per inbox per day); kept 60 days like the inbox.status topic.
CREATE TABLE IF NOT EXISTS {db}.inbox_status
(
    event_id String,
    inbox_id LowCardinality(String),
    state LowCardinality(String),
    reason String,
    error_kind LowCardinality(String),
    retriable Nullable(Bool),
    folder String,
    progress_done Nullable(UInt64),
    progress_total Nullable(UInt64),
    server String,
    at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (inbox_id, at, event_id)
TTL toDateTime(at) + INTERVAL 60 DAY DELETE;

-- Mail the CRM sent or had BCC-logged: the denominator of the reply rate.
-- Keyed by message_id (not event_id): a mail first logged and later re-announced is one mail,
-- and replies join on it. No TTL: the CRM's own mail, sequence mail included, is kept
-- indefinitely and is never removed by age.
CREATE TABLE IF NOT EXISTS {db}.crm_outbound
(
    event_id String,
    message_id String,
    kind LowCardinality(String),
    inbox_id LowCardinality(String),
    contact_email String,
    contact_name String,
    subject String,
    sequence_id String,
    crm_ref String,
    sent_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY message_id;

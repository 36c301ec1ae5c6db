-- title: Sync lag per inbox
-- Two hops, in seconds: server INTERNALDATE -> event observed by the producer (includes how old
-- the mail was when a backfill found it), and event observed -> row inserted here (the
-- pipeline's own lag: Kafka plus the sink's batching).
SELECT
    inbox_id,
    count() AS messages,
    round(quantileExactInclusive(0.5)(dateDiff('millisecond', assumeNotNull(internal_date), observed_at)) / 1000, 3)
        AS server_to_event_p50_s,
    round(quantileExactInclusive(0.95)(dateDiff('millisecond', assumeNotNull(internal_date), observed_at)) / 1000, 3)
        AS server_to_event_p95_s,
    round(quantileExactInclusive(0.5)(dateDiff('millisecond', observed_at, inserted_at)) / 1000, 3)
        AS event_to_row_p50_s,
    round(quantileExactInclusive(0.95)(dateDiff('millisecond', observed_at, inserted_at)) / 1000, 3)
        AS event_to_row_p95_s,
    max(observed_at) AS last_event_at
FROM {db:Identifier}.email_metadata FINAL
WHERE event_type = 'message.new' AND internal_date IS NOT NULL
GROUP BY inbox_id
ORDER BY inbox_id

-- inbox.threads records as threads rows (sinks/rows.py thread_row), read by the engine from
-- an Avro container of the Kafka values (sinks/avro_insert.py).
SELECT
    src.event_id AS event_id,
    src.event_type AS event_type,
    src.inbox_id AS inbox_id,
    ifNull(src.message_event_id, '') AS message_event_id,
    ifNull(src.message_id, '') AS message_id,
    src.thread_id AS thread_id,
    src.merged_thread_ids AS merged_thread_ids,
    ifNull(src.root_message_id, '') AS root_message_id,
    ifNull(src.base_subject, '') AS base_subject,
    src.algorithm AS algorithm,
    fromUnixTimestamp64Milli(src.occurred_at, 'UTC') AS occurred_at,
    src.occurred_at AS version
FROM {source} AS src

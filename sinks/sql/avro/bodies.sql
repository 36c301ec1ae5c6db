-- inbox.bodies records as bodies rows (sinks/rows.py body_row), read by the engine from an
-- Avro container of the Kafka values (sinks/avro_insert.py).
SELECT
    src.event_id AS event_id,
    src.inbox_id AS inbox_id,
    src.folder AS folder,
    src.uidvalidity AS uidvalidity,
    src.uid AS uid,
    src.message_id AS message_id,
    src.text AS text,
    src.html AS html,
    arrayMap(a -> ifNull(tupleElement(a, 'filename'), ''), src.attachments) AS attachment_filenames,
    arrayMap(a -> tupleElement(a, 'content_type'), src.attachments) AS attachment_content_types,
    arrayMap(a -> tupleElement(a, 'size'), src.attachments) AS attachment_sizes,
    arrayMap(a -> tupleElement(a, 'sha256'), src.attachments) AS attachment_sha256,
    src.attachments_logged AS attachments_logged,
    src.attachments_skipped_reason AS attachments_skipped_reason,
    src.size AS size,
    fromUnixTimestamp64Milli(src.`date`, 'UTC') AS date,
    fromUnixTimestamp64Milli(src.internal_date, 'UTC') AS internal_date,
    fromUnixTimestamp64Milli(coalesce(src.internal_date, src.`date`, src.observed_at), 'UTC') AS received_at,
    src.parse_error AS parse_error,
    fromUnixTimestamp64Milli(src.observed_at, 'UTC') AS observed_at,
    src.observed_at AS version
FROM {source} AS src

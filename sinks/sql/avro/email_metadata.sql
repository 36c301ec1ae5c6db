-- inbox.messages records as email_metadata rows, read by the engine from an Avro container
-- of the Kafka values (sinks/avro_insert.py). The same mapping as sinks/rows.py metadata_row;
-- tests/integration/sinks/test_avro_insert.py checks that both land the same rows.
-- Source columns are named through ``src``: the aliases here would shadow them otherwise.
-- Timestamps arrive as epoch milliseconds (the container's schema is the parsing canonical
-- form, which has no logical types). Rows whose raw headers are not UTF-8 are left to the
-- Python mapping (sinks/avro_insert.py says which), whose replacement characters this engine
-- would not reproduce.
SELECT
    src.event_id AS event_id,
    src.event_type AS event_type,
    src.inbox_id AS inbox_id,
    src.folder AS folder,
    src.folder_role AS folder_role,
    src.uidvalidity AS uidvalidity,
    src.uid AS uid,
    src.modseq AS modseq,
    src.message_id AS message_id,
    src.message_id_synthetic AS message_id_synthetic,
    src.in_reply_to AS in_reply_to,
    src.`references` AS `references`,
    ifNull(src.subject, '') AS subject,
    ifNull(tupleElement(src.`from`, 'email'), '') AS from_email,
    ifNull(tupleElement(src.`from`, 'name'), '') AS from_name,
    arrayMap(a -> tupleElement(a, 'email'), src.`to`) AS to_emails,
    arrayMap(a -> tupleElement(a, 'email'), src.`cc`) AS cc_emails,
    fromUnixTimestamp64Milli(src.`date`, 'UTC') AS date,
    fromUnixTimestamp64Milli(src.internal_date, 'UTC') AS internal_date,
    fromUnixTimestamp64Milli(coalesce(src.internal_date, src.`date`, src.observed_at), 'UTC') AS received_at,
    src.size AS size,
    src.flags AS flags,
    src.has_attachments AS has_attachments,
    src.raw_headers AS raw_headers,
    src.parse_error AS parse_error,
    fromUnixTimestamp64Milli(src.observed_at, 'UTC') AS observed_at,
    src.observed_at AS version
FROM {source} AS src

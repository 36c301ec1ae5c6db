-- title: Messages per inbox per day
-- Distinct messages by the day the server received them, split by folder role.
-- Parameter: {db:Identifier} (clickhouse-client --param_db=inboxstream --queries-file this.sql)
SELECT
    inbox_id,
    toDate(received_at) AS day,
    uniqExact(message_id) AS messages,
    uniqExactIf(message_id, folder_role = 'inbox') AS received,
    uniqExactIf(message_id, folder_role = 'sent') AS sent
FROM {db:Identifier}.email_metadata FINAL
WHERE event_type = 'message.new'
GROUP BY inbox_id, day
ORDER BY inbox_id, day

-- title: Thread length distribution
-- How many conversations have 1, 2, 3, ... messages, per the processors' threads (merges
-- followed, see the thread_messages view). Until the processors have written any thread, the
-- root of each message's References chain stands in, so the figure exists from the first sync.
SELECT length AS messages_in_thread, count() AS threads
FROM
(
    SELECT inbox_id, thread_id, uniqExact(message_id) AS length
    FROM {db:Identifier}.thread_messages
    GROUP BY inbox_id, thread_id
    UNION ALL
    SELECT inbox_id, if(empty(references), message_id, references[1]) AS thread_id,
           uniqExact(message_id) AS length
    FROM {db:Identifier}.email_metadata FINAL
    WHERE event_type = 'message.new' AND (SELECT count() FROM {db:Identifier}.threads) = 0
    GROUP BY inbox_id, thread_id
)
GROUP BY messages_in_thread
ORDER BY messages_in_thread

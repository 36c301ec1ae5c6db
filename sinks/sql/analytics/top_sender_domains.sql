-- title: Top sender domains
-- Domains that write to the connected inboxes (our own Sent copies left out).
SELECT
    from_domain,
    uniqExact(message_id) AS messages,
    uniqExact(inbox_id) AS inboxes
FROM {db:Identifier}.email_metadata FINAL
WHERE event_type = 'message.new' AND folder_role != 'sent' AND from_domain != ''
GROUP BY from_domain
ORDER BY messages DESC, from_domain
LIMIT 10

-- title: Reply rate and median reply time to CRM mail
-- Per kind of CRM mail (sent, logged, sequence) and overall (crm_kind = 'all'): how many got at
-- least one live (not deleted) engagement, and the median time from sending to the first reply.
SELECT
    if(o.kind = '', 'all', o.kind) AS crm_kind,
    count() AS crm_mails,
    countIf(r.replies > 0) AS replied,
    round(100 * replied / crm_mails, 1) AS reply_rate_pct,
    round(quantileExactInclusiveIf(0.5)(dateDiff('second', o.sent_at, r.first_reply_at), r.replies > 0) / 3600, 2)
        AS median_reply_hours
FROM {db:Identifier}.crm_outbound AS o FINAL
LEFT JOIN
(
    SELECT crm_message_id, count() AS replies, min(replied_at) AS first_reply_at
    FROM {db:Identifier}.engagements_current
    WHERE NOT is_deleted
    GROUP BY crm_message_id
) AS r ON r.crm_message_id = o.message_id
GROUP BY ROLLUP(o.kind)
ORDER BY crm_kind = 'all', crm_kind

-- title: Inboxes disconnected and why
-- Inboxes whose latest connection event is a disconnect, with the reason a person can act on,
-- and how often each disconnected in the kept window (60 days).
SELECT
    inbox_id,
    argMax(state, (at, version)) AS last_state,
    argMax(reason, (at, version)) AS last_reason,
    argMax(error_kind, (at, version)) AS last_error_kind,
    argMax(retriable, (at, version)) AS last_retriable,
    argMax(server, (at, version)) AS last_server,
    max(at) AS since,
    countIf(state = 'disconnected') AS disconnects
FROM {db:Identifier}.inbox_status FINAL
GROUP BY inbox_id
HAVING last_state = 'disconnected'
ORDER BY since DESC

"""The IMAP client: connections over TLS with the source documents' checks (Courier and POP3
refused, IMAP4rev1 required), capabilities, folder roles, FETCH/SEARCH response parsing and the
five-connection budget. Used by the producers (sync) and by sending (the Sent copy)."""

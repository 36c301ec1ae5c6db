"""Sending through an inbox: compose, SMTP submission, the copy in the Sent folder and the
crm.outbound event. Shares the inbox's connection budget with the producers (imap.budget)."""

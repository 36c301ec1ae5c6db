"""inboxstream: connected inboxes as Kafka events, threaded, matched to CRM mail, projected
into ClickHouse.

The installed namespace. Every layer of the project is a subpackage here (the folders keep
their places at the repository root; see the README's architecture section for what each
layer may import):

    inboxstream.errors       the root error type (``InboxstreamError``, with ``retriable``)
    inboxstream.schemas      Avro contracts, event models, the serde
    inboxstream.core         settings, topic and limit contracts, Kafka wiring
    inboxstream.mail         RFC 5322 header fields: ids, dates, encoded words
    inboxstream.imap         the IMAP client: TLS, capability checks, folders, connection budget
    inboxstream.producers    mailbox sync: backfill, IDLE, checkpoints, events
    inboxstream.processors   threading, CRM matching, retention (a pure engine + a Kafka driver)
    inboxstream.sinks        ClickHouse projections, analytics, the query endpoint
    inboxstream.send         sending through an inbox: SMTP and the Sent copy
    inboxstream.infra        installing and starting Kafka, Dovecot, Postfix, chDB locally
    inboxstream.app          the command line, the demo and the pipeline wiring
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from inboxstream import _compiled

_compiled.install()  # a stale compiled build never runs (see _compiled)

try:
    __version__ = version("inboxstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

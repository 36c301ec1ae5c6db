"""Typed IMAP errors. Each says what failed in words a mailbox owner can act on, carries a
``kind`` for ``inbox.status`` events, and a ``retriable`` flag the reconnect loop obeys.
No message ever contains a password."""

from __future__ import annotations

from runtime.errors import InboxstreamError


class ImapError(InboxstreamError):
    kind = "protocol"
    retriable = True


class DnsError(ImapError):
    kind = "dns"
    retriable = True


class ConnectionRefusedByServerError(ImapError):
    kind = "refused"
    retriable = True


class ConnectTimeoutError(ImapError):
    kind = "timeout"
    retriable = True


class TlsError(ImapError):
    """The TLS handshake failed; the message names the check (host name, issuer, protocol)."""

    kind = "tls"
    retriable = False


class AuthError(ImapError):
    """Wrong password or revoked access: disconnect and say so, never retry in a loop."""

    kind = "auth"
    retriable = False


class CapabilityError(ImapError):
    kind = "capability"
    retriable = False


class UnsupportedServerError(ImapError):
    """Courier-IMAP, POP3, or something that is not IMAP4rev1 at all."""

    kind = "unsupported_server"
    retriable = False


class ProtocolError(ImapError):
    kind = "protocol"
    retriable = True

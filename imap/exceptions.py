"""Typed IMAP errors. Each says what failed in words a mailbox owner can act on, carries a
``kind`` for ``inbox.status`` events, and a ``retriable`` flag the reconnect loop obeys.
No message ever contains a password."""

from __future__ import annotations

from typing import Literal

from inboxstream.errors import InboxstreamError

TlsCheck = Literal[
    "hostname", "self_signed", "untrusted_issuer", "expired", "protocol_version", "handshake"
]


class ImapError(InboxstreamError):
    kind = "protocol"
    retriable = True


class DnsError(ImapError):
    kind = "dns"
    retriable = True  # a typo never resolves, but DNS outages are transient: back off and retry


class ConnectionRefusedByServerError(ImapError):
    kind = "refused"
    retriable = True


class ConnectTimeoutError(ImapError):
    kind = "timeout"
    retriable = True


class TlsError(ImapError):
    """The TLS handshake failed; ``check`` names the check that failed (and the message too):
    host name, self-signed, untrusted issuer, expired, protocol version, or the handshake."""

    kind = "tls"
    retriable = False

    def __init__(
        self, message: str, *, check: TlsCheck = "handshake", retriable: bool | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.check: TlsCheck = check


class AuthError(ImapError):
    """Wrong password or revoked access: disconnect and say so, never retry in a loop."""

    kind = "auth"
    retriable = False


class CapabilityError(ImapError):
    """The server lacks something we cannot work without (IMAP4rev1, STARTTLS, LOGIN)."""

    kind = "capability"
    retriable = False


class UnsupportedServerError(ImapError):
    """Courier-IMAP, POP3, or something that is not IMAP at all."""

    kind = "unsupported_server"
    retriable = False


class ProtocolError(ImapError):
    kind = "protocol"
    retriable = True

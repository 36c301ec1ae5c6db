"""SMTP submission over TLS: one authenticated transaction, every failure a typed error.

We use aiosmtplib (a maintained, typed asyncio SMTP client) rather than stdlib ``smtplib`` in a
thread: the sender lives on the same event loop as the IMAP connections and the per-inbox
connection budget (asyncio semaphores), a cancelled send really stops (a thread blocked in a
socket read cannot be cancelled), and it supports both implicit TLS and STARTTLS with our own
``SSLContext``. We drive it command by command (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA) instead
of ``sendmail()`` so each rejection is reported with the stage it happened at, and so a single
refused recipient aborts the whole transaction: a message goes to all recipients or to none.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosmtplib

from inboxstream.core.oauth import (
    Credentials,
    OAuthError,
    OAuthLogin,
    abort_response,
    describe_challenge,
    initial_response,
)
from inboxstream.errors import InboxstreamError
from inboxstream.imap.connection import ImapEndpoint, TlsVersion, make_ssl_context

log = logging.getLogger(__name__)

SmtpStage = Literal["connect", "tls", "ehlo", "auth", "size", "mail", "rcpt", "data"]


# --- errors ----------------------------------------------------------------------------------


class SendError(InboxstreamError):
    """Root of every error of sending through an inbox. ``kind`` names it for events/logs."""

    kind = "send"
    retriable = False


class InvalidAddressError(SendError):
    """An address is not a usable mailbox (syntax, header injection, missing domain)."""

    kind = "invalid_address"


class InvalidMessageError(SendError):
    """The message cannot be built as asked (no recipient, unreadable attachment, ...)."""

    kind = "invalid_message"


class MessageTooLargeError(SendError):
    """The message is larger than the server accepts (its SIZE limit or a 552 reply)."""

    kind = "too_large"


class SmtpConnectionError(SendError):
    """The server could not be reached or dropped the connection; safe to retry."""

    kind = "smtp_connection"
    retriable = True


class SmtpTlsError(SendError):
    """TLS failed (certificate host name or chain, protocol); retrying will not help."""

    kind = "smtp_tls"


class SmtpAuthError(SendError):
    """The server refused the login: the password changed or access was revoked."""

    kind = "smtp_auth"


class SmtpRejectedError(SendError):
    """The server refused the message at ``stage`` with ``code`` (4xx: try later; 5xx: never).

    ``recipient`` is set when one recipient was refused at RCPT. Nothing was sent.
    """

    kind = "smtp_rejected"

    def __init__(
        self, message: str, *, stage: SmtpStage, code: int, recipient: str | None = None
    ) -> None:
        super().__init__(message, retriable=400 <= code < 500)
        self.stage = stage
        self.code = code
        self.recipient = recipient


# --- the endpoint and the transaction ---------------------------------------------------------


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to submit; the password is passed separately and never stored here."""

    host: str
    port: int
    security: Literal["tls", "starttls"] = "tls"
    allow_unverified_certificate: bool = False
    ca_file: Path | None = None
    tls_min_version: TlsVersion = "TLSv1.2"
    timeout: float = 30.0

    def ssl_context(self) -> ssl.SSLContext:
        """The same TLS rules as IMAP: verify chain and host name unless the inbox opted out."""
        return make_ssl_context(
            ImapEndpoint(
                host=self.host,
                port=self.port,
                security=self.security,
                allow_unverified_certificate=self.allow_unverified_certificate,
                ca_file=self.ca_file,
                tls_min_version=self.tls_min_version,
            )
        )


@dataclass(frozen=True)
class SubmitResult:
    """What the server said when it took responsibility for the message."""

    recipients: tuple[str, ...]
    code: int
    reply: str  # e.g. "2.0.0 Ok: queued as 4F3A2520..." (the server's queue id)


async def submit(
    endpoint: SmtpEndpoint,
    username: str,
    password: Credentials,
    *,
    sender: str,
    recipients: Sequence[str],
    raw: bytes,
) -> SubmitResult:
    """Submit ``raw`` for ``recipients`` as ``sender``, authenticated, over TLS.

    Returns once the server answered 250 to the end of DATA (it took responsibility). Raises a
    SendError subclass otherwise; then the message was not accepted for anyone.
    """
    if not recipients:
        raise InvalidMessageError("a message needs at least one recipient")
    where = f"{endpoint.host}:{endpoint.port}"
    ctx = endpoint.ssl_context()
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        timeout=endpoint.timeout,
        use_tls=endpoint.security == "tls",
        start_tls=False,  # done explicitly below, so a server without STARTTLS is an error
        tls_context=ctx,
    )
    stage: SmtpStage = "connect"
    try:
        await client.connect()
        stage = "ehlo"
        await client.ehlo()
        if endpoint.security == "starttls":
            stage = "tls"
            if not client.supports_extension("starttls"):
                raise SmtpTlsError(
                    f"{where} does not offer STARTTLS, and plain-text SMTP is not allowed; "
                    "use the implicit-TLS port (usually 465)"
                )
            await client.starttls(tls_context=ctx, server_hostname=endpoint.host)
            stage = "ehlo"
            await client.ehlo()  # RFC 3207: forget what was learned before TLS
        stage = "auth"
        if not client.supports_extension("auth"):
            raise SmtpAuthError(f"{where} offers no SMTP AUTH on this connection")
        if isinstance(password, OAuthLogin):
            await _oauth_login(client, username, password, endpoint, where)
        else:
            await client.login(username, password)
        stage = "size"
        _check_size(client, len(raw), where)
        stage = "mail"
        options = [f"SIZE={len(raw)}"] if client.supports_extension("size") else []
        await client.mail(sender, options=options)
        stage = "rcpt"
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                await _reset_quietly(client)
                raise SmtpRejectedError(
                    f"{where} refused recipient {rcpt!r}: {exc.code} {exc.message}",
                    stage="rcpt",
                    code=exc.code,
                    recipient=rcpt,
                ) from None
        stage = "data"
        response = await client.data(raw)
    except SendError:
        await _quit_quietly(client)
        raise
    except BaseException as exc:
        await _quit_quietly(client)
        raise _translate(exc, stage, where, username) from exc
    await _quit_quietly(client)
    log.info("%s accepted a message for %d recipient(s): %s", where, len(recipients), response)
    return SubmitResult(tuple(recipients), response.code, response.message)


async def _oauth_login(
    client: aiosmtplib.SMTP, username: str, login: OAuthLogin, endpoint: SmtpEndpoint, where: str
) -> None:
    """AUTH XOAUTH2 or OAUTHBEARER (aiosmtplib has XOAUTH2 only, so both go the same way):
    an error challenge (334) is answered so the server ends with its final reply; a refused
    token is replaced once, refused again it is an SmtpAuthError."""
    mechanism = login.mechanism.upper()
    if login.mechanism not in client.server_auth_methods:
        offered = " ".join(m.upper() for m in client.server_auth_methods) or "none"
        raise SmtpAuthError(f"{where} does not offer AUTH {mechanism} (it offers {offered})")
    rejected: str | None = None
    why = ""
    for _attempt in range(2):
        try:
            token = await login.source.token(rejected=rejected)
        except OAuthError as exc:
            if exc.retriable:
                raise SmtpConnectionError(f"{where}: {exc}") from None
            raise SmtpAuthError(f"{where}: {exc}") from None
        ir = initial_response(login.mechanism, username, token, endpoint.host, endpoint.port)
        response = await client.execute_command(b"AUTH", mechanism.encode(), ir.encode())
        if response.code == 334:
            why = describe_challenge(response.message)
            response = await client.execute_command(abort_response(login.mechanism).encode())
        if response.code == 235:
            return
        if 400 <= response.code < 500:
            raise SmtpConnectionError(
                f"{where} cannot authenticate {username!r} right now: {response.code} "
                f"{response.message}"
            )
        rejected = token
    raise SmtpAuthError(
        f"{where} rejected the OAuth2 token for {username!r} twice, a fresh one included"
        f"{f' ({why})' if why else ''}: {response.code} {response.message}. Sign the inbox "
        "in again"
    )


def _check_size(client: aiosmtplib.SMTP, size: int, where: str) -> None:
    """Refuse before MAIL when the server's advertised SIZE (RFC 1870) is smaller."""
    limit_text = client.esmtp_extensions.get("size", "").strip()
    if limit_text.isdigit() and int(limit_text) > 0 and size > int(limit_text):
        raise MessageTooLargeError(
            f"the message is {size:,} bytes; {where} accepts at most {int(limit_text):,}"
        )


async def _reset_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        pass


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _translate(exc: BaseException, stage: SmtpStage, where: str, username: str) -> BaseException:
    """aiosmtplib and socket failures to our typed errors; never includes the password."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SmtpTlsError(f"{where}: certificate check failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return SmtpTlsError(f"{where}: TLS handshake failed: {exc.reason or exc}")
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(cause, ssl.SSLError):
        return _translate(cause, stage, where, username)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SmtpAuthError(
            f"{where} rejected the login for {username!r}: {exc.code} {exc.message}. The "
            "password may have changed or access was revoked; reconnect the inbox"
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code == 552 or (stage in ("mail", "data") and "size" in exc.message.lower()):
            return MessageTooLargeError(f"{where} refused the message as too large: {exc.message}")
        return SmtpRejectedError(
            f"{where} refused the message at {stage.upper()}: {exc.code} {exc.message}",
            stage=stage,
            code=exc.code,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return SmtpConnectionError(f"{where} did not answer in time (at {stage})")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return SmtpConnectionError(f"{where}: connection failed at {stage}: {exc}")
    if isinstance(exc, OSError):
        return SmtpConnectionError(f"{where}: connection error at {stage}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return SendError(f"{where}: SMTP error at {stage}: {exc}")
    return SendError(f"{where}: {type(exc).__name__} at {stage}: {exc}")

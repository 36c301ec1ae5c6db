"""One IMAP connection: TCP, TLS (implicit or STARTTLS), server checks, login, capabilities.

We drive aioimaplib's protocol object directly instead of its ``IMAP4`` facade because we must
see the greeting (to refuse POP3 and Courier-IMAP), upgrade to TLS in place for STARTTLS
(``loop.start_tls``; aioimaplib has no STARTTLS), and turn every failure into a typed error.
``imap/response.py`` replaces aioimaplib's response reader, which is quadratic in the
size of a FETCH response and recursive per line (see there for the measurements).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import ssl
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aioimaplib import aioimaplib

from inboxstream.core.oauth import (
    Credentials,
    OAuthError,
    OAuthLogin,
    abort_response,
    describe_challenge,
    initial_response,
)
from inboxstream.imap.capabilities import (
    POP3_PORTS,
    ServerFeatures,
    check_greeting,
    check_id,
    check_port,
    parse_id_response,
)
from inboxstream.imap.exceptions import (
    AuthError,
    CapabilityError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    DnsError,
    ImapError,
    ProtocolError,
    TlsError,
    UnsupportedServerError,
)
from inboxstream.imap.folders import Folder, parse_list_lines
from inboxstream.imap.response import FastFetchCommand, handle_responses
from inboxstream.imap.tls import tls_error

if TYPE_CHECKING:
    from inboxstream.core.settings import InboxSettings

__all__ = [
    "POP3_PORTS",
    "ImapConnection",
    "ImapEndpoint",
    "SelectedFolder",
    "check_greeting",
    "endpoint_for_inbox",
    "make_ssl_context",
]

log = logging.getLogger(__name__)

#: What we tell servers in ID (RFC 2971); never anything about the user.
CLIENT_ID = {"name": "inboxstream", "vendor": "inboxstream"}
_SELECT_CODE_RE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS_RE = re.compile(rb"^(\d+) EXISTS")
_ENABLED_RE = re.compile(rb"^(?:\* )?ENABLED\b(.*)$", re.IGNORECASE)
_RESP_CODE_RE = re.compile(rb"^\s*\[([A-Z-]+)")
#: RFC 5530 codes meaning "the credentials are wrong or no longer allowed": never retried.
_AUTH_CODES = {b"AUTHENTICATIONFAILED", b"AUTHORIZATIONFAILED", b"EXPIRED", b"PRIVACYREQUIRED"}

TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class ImapEndpoint:
    """Where and how to connect; the password is passed separately and never stored here."""

    host: str
    port: int
    security: Literal["tls", "starttls"] = "tls"
    allow_unverified_certificate: bool = False
    ca_file: Path | None = None
    tls_min_version: TlsVersion = "TLSv1.2"
    timeout: float = 20.0


def endpoint_for_inbox(inbox: InboxSettings, *, timeout: float = 20.0) -> ImapEndpoint:
    """The inbox's IMAP settings; TLS 1.0/1.1 only when the inbox opted in."""
    return ImapEndpoint(
        host=inbox.imap_host,
        port=inbox.imap_port,
        security=inbox.imap_security,
        allow_unverified_certificate=inbox.allow_unverified_certificate,
        ca_file=inbox.ca_file,
        tls_min_version="TLSv1" if inbox.allow_legacy_tls else "TLSv1.2",
        timeout=timeout,
    )


@dataclass
class _SaslExchange:
    """What the protocol needs to answer AUTHENTICATE's continuations."""

    abort: str
    pending: str | None = None
    challenge: bytes = b""


@dataclass(frozen=True)
class SelectedFolder:
    name: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None


def make_ssl_context(endpoint: ImapEndpoint) -> ssl.SSLContext:
    """Verify the chain and the host name unless the inbox explicitly allows otherwise.

    One context per distinct TLS setting, shared by every connection that uses it: building
    one loads the system's CA store, about 0.8 MB and 20 ms each (measured), which for a
    producer with two connections per inbox was most of its memory (0.9 MB an inbox) and a
    large part of a cold start's CPU. Sharing a context is safe: each connection has its own
    TLS session. A CA file is re-read when it changes on disk."""
    ca = endpoint.ca_file
    stamp = ca.stat().st_mtime_ns if ca is not None and ca.exists() else None
    return _shared_context(
        str(ca) if ca is not None else None,
        stamp,
        endpoint.tls_min_version,
        endpoint.allow_unverified_certificate,
    )


@functools.lru_cache(maxsize=64)
def _shared_context(
    cafile: str | None, stamp: int | None, tls_min_version: TlsVersion, unverified: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if tls_min_version in ("TLSv1", "TLSv1.1"):
        # The inbox opted in to an old server. Python deprecates these versions and OpenSSL's
        # default security level refuses them; both are overridden for this inbox only.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = _TLS_VERSIONS[tls_min_version]
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        ctx.minimum_version = _TLS_VERSIONS[tls_min_version]
    if unverified:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus the greeting kept and checked before anything else, and a
    linear, non-recursive response reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        super().__init__(loop, self._lost)
        self.port = port
        self.greeting: bytes | None = None
        self.refusal: str | None = None
        self.failure: BaseException | None = None
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()

    def data_received(self, d: bytes) -> None:
        """aioimaplib's, without its ``log.debug('Received : %s' % d)``: that formats every
        chunk (mail bodies included) into a string even with debug logging off."""
        try:
            pending, command = self.incomplete_line, self.current_command  # type: ignore[has-type]
            self._handle_responses(pending + d, self._handle_line, command)
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _continuation(self, line: bytes) -> None:
        """AUTHENTICATE's continuations: the first "+" of a server without SASL-IR gets the
        initial response; any later one is an error challenge (base64 JSON), kept for the
        message and answered so the server ends the exchange with NO (RFC 7628 3.2.3)."""
        command = self.pending_sync_command
        sasl = getattr(command, "sasl", None)
        if command is None or command.name != "AUTHENTICATE" or sasl is None:
            super()._continuation(line)
            return
        if sasl.pending is not None:
            answer, sasl.pending = sasl.pending, None
        else:
            sasl.challenge = line[1:].strip()
            answer = sasl.abort
        self.transport.write(answer.encode("ascii") + b"\r\n")

    def _lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.ready.set()  # wake a waiter that would otherwise hang on a dead socket

    def _handle_responses(
        self, data: bytes, line_handler: Any, current_cmd: aioimaplib.Command | None = None
    ) -> None:
        handle_responses(self, data, line_handler, current_cmd)

    async def welcome(self, command: bytes) -> None:
        self.greeting = bytes(command)
        self.refusal = check_greeting(self.greeting, self.port)
        if self.refusal:
            self.ready.set()
            if self.transport is not None:
                self.transport.close()
            return
        if self.greeting.lstrip(b"* ").upper().startswith(b"BYE"):
            text = self.greeting.decode("utf-8", "replace")[:200]
            self.failure = ProtocolError(f"the server closed the session at once: {text!r}")
            self.ready.set()
            return
        try:
            await super().welcome(command)
        except BaseException as exc:  # noqa: BLE001 - surfaced to open() below
            self.failure = exc
        self.ready.set()


class ImapConnection:
    """An authenticated IMAP session. Use ``await ImapConnection.open(...)``."""

    def __init__(self, protocol: _Protocol, endpoint: ImapEndpoint) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.server_id: dict[str, str] = {}
        self.enabled: frozenset[str] = frozenset()
        self._identified = False

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    @property
    def capabilities(self) -> set[str]:
        return {c.upper() for c in self.protocol.capabilities}

    @property
    def features(self) -> ServerFeatures:
        return ServerFeatures.from_capabilities(self.capabilities, self.enabled)

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @classmethod
    async def open(
        cls, endpoint: ImapEndpoint, username: str, password: Credentials
    ) -> ImapConnection:
        """Connect, secure, check and log in (LOGIN with a password, AUTHENTICATE with an
        OAuth2 login); every failure is a typed ImapError whose message never contains the
        password or a token."""
        try:
            return await cls._open(endpoint, username, password)
        except ImapError as exc:
            # Belt and braces: no code path should put the password in a message, but a
            # library's text could; scrub it before anything logs or publishes the error.
            if isinstance(password, str) and password and password in str(exc):
                exc.args = (str(exc).replace(password, "********"),)
            raise

    @classmethod
    async def _open(
        cls, endpoint: ImapEndpoint, username: str, password: Credentials
    ) -> ImapConnection:
        where = f"{endpoint.host}:{endpoint.port}"
        refusal = check_port(endpoint.port)
        if refusal:
            raise UnsupportedServerError(f"{where}: {refusal}")
        loop = asyncio.get_running_loop()
        ctx = make_ssl_context(endpoint)
        protocol = _Protocol(loop, endpoint.port)
        phase = "connect" if endpoint.security == "starttls" else "connect and TLS handshake"
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    endpoint.host,
                    endpoint.port,
                    ssl=ctx if endpoint.security == "tls" else None,
                    server_hostname=endpoint.host if endpoint.security == "tls" else None,
                    ssl_handshake_timeout=endpoint.timeout if endpoint.security == "tls" else None,
                ),
                endpoint.timeout,
            )
            phase = "IMAP greeting"
            await asyncio.wait_for(protocol.ready.wait(), endpoint.timeout)
        except BaseException as exc:
            if protocol.transport is not None:
                protocol.transport.close()
            raise _translate(exc, where, endpoint.host, phase, endpoint.timeout) from exc
        conn = cls(protocol, endpoint)
        try:
            conn._check_ready()
            if endpoint.security == "starttls":
                await conn._starttls(ctx)
            conn._require_imap4rev1()
            await conn._identify()
            if isinstance(password, OAuthLogin):
                await conn._authenticate(username, password)
            else:
                await conn._login(username, password)
            conn._require_imap4rev1()
            await conn._identify()
            await conn._enable()
        except BaseException:
            conn.abort()
            raise
        missing = conn.features.missing()
        if missing:
            log.info("%s lacks %s; using fallbacks", where, ", ".join(missing))
        return conn

    def _check_ready(self) -> None:
        if self.protocol.refusal:
            raise UnsupportedServerError(f"{self.where}: {self.protocol.refusal}")
        failure = self.protocol.failure
        if isinstance(failure, ImapError):
            raise type(failure)(f"{self.where}: {failure}")
        if failure is not None:
            if "IMAP4 compliant" in str(failure):
                raise CapabilityError(
                    f"{self.where} does not offer IMAP4rev1 in its capabilities; only IMAP4rev1 "
                    "servers are supported"
                )
            raise UnsupportedServerError(f"{self.where}: unusable greeting: {failure}")
        if self.protocol.closed.is_set():
            raise ProtocolError(f"{self.where} closed the connection during the greeting")

    def _require_imap4rev1(self) -> None:
        if "IMAP4REV1" not in self.capabilities:
            raise CapabilityError(
                f"{self.where} does not offer the IMAP4rev1 capability (it offers "
                f"{' '.join(sorted(self.capabilities))[:200]}); only IMAP4rev1 servers are "
                "supported"
            )

    async def _starttls(self, ctx: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.capabilities:
            raise CapabilityError(
                f"{self.where} does not offer STARTTLS, and plain-text IMAP is not allowed; "
                "use the implicit-TLS port (usually 993)"
            )
        response = await self._execute("STARTTLS")
        if response.result != "OK":
            raise TlsError(f"{self.where} refused STARTTLS: {_text(response)}")
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(
                    self.protocol.transport,
                    self.protocol,
                    ctx,
                    server_hostname=self.endpoint.host,
                    ssl_handshake_timeout=self.endpoint.timeout,
                ),
                self.endpoint.timeout,
            )
        except BaseException as exc:
            raise _translate(
                exc, self.where, self.endpoint.host, "TLS handshake", self.endpoint.timeout
            ) from exc
        self.protocol.transport = transport
        # RFC 3501 6.2.1: capabilities learned before STARTTLS must be discarded.
        await self._capability()

    async def _capability(self) -> None:
        try:
            await asyncio.wait_for(self.protocol.capability(), self.endpoint.timeout)
        except BaseException as exc:
            if "IMAP4 compliant" in str(exc):
                self.protocol.capabilities = set()
                return  # _require_imap4rev1 names what is missing
            raise _translate(
                exc, self.where, self.endpoint.host, "CAPABILITY", self.endpoint.timeout
            ) from exc

    async def _identify(self) -> None:
        """Send ID (RFC 2971) once the server offers it; refuse Courier-IMAP by its answer.

        Done before login when possible, so credentials never go to a refused server."""
        if self._identified or "ID" not in self.capabilities:
            return
        self._identified = True
        try:
            response = await asyncio.wait_for(self.protocol.id(**CLIENT_ID), self.endpoint.timeout)
        except BaseException as exc:
            raise _translate(
                exc, self.where, self.endpoint.host, "ID", self.endpoint.timeout
            ) from exc
        if response.result != "OK":
            log.info("%s: ID failed (%s); continuing without it", self.where, _text(response))
            return
        self.server_id = parse_id_response(response.lines)
        refusal = check_id(self.server_id)
        if refusal:
            raise UnsupportedServerError(f"{self.where}: {refusal}")

    async def _login(self, username: str, password: str) -> None:
        if "LOGINDISABLED" in self.capabilities:
            raise CapabilityError(
                f"{self.where} has LOGIN disabled on this connection (LOGINDISABLED); the "
                "server wants a different authentication mechanism or connection security"
            )
        response = await self._sign_in("LOGIN", self.protocol.login(username, password))
        if response.result != "OK":
            text = _text(response)
            code = self._refused(username, text)
            detail = f"[{code.group(1).decode()}] " if code and code.group(1) in _AUTH_CODES else ""
            raise AuthError(
                f"{self.where} rejected the login for {username!r}: {detail}{text}. The "
                "password may have changed or access was revoked; reconnect the inbox with new "
                "credentials"
            )
        # Servers often send new capabilities after login; ask again to be sure.
        await self._capability()

    async def _sign_in(self, what: str, step: Awaitable[Any]) -> Any:
        """LOGIN or AUTHENTICATE under the timeout. A failure is named by its type only:
        aioimaplib's own messages may quote the command, credentials included."""
        try:
            return await asyncio.wait_for(step, self.endpoint.timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                raise ConnectTimeoutError(
                    f"{self.where} did not answer {what} within {self.endpoint.timeout:g}s"
                ) from None
            raise ProtocolError(f"{self.where}: {what} failed with {type(exc).__name__}") from None

    def _refused(self, username: str, text: str) -> re.Match[bytes] | None:
        """A refused sign-in's response code; ``[UNAVAILABLE]`` (RFC 5530: the server cannot
        log anyone in right now) is raised as retriable."""
        code = _RESP_CODE_RE.match(text.encode())
        if code and code.group(1) == b"UNAVAILABLE":
            raise ImapError(
                f"{self.where} cannot log {username!r} in right now: {text}. Will retry",
                retriable=True,
            )
        return code

    async def _authenticate(self, username: str, login: OAuthLogin) -> None:
        """SASL XOAUTH2 or OAUTHBEARER with the inbox's access token. A refused token is
        replaced once (revoked or expired early); refused again, the login is an AuthError."""
        mechanism = login.mechanism.upper()
        if f"AUTH={mechanism}" not in self.capabilities:
            offered = sorted(c for c in self.capabilities if c.startswith("AUTH="))
            raise CapabilityError(
                f"{self.where} does not offer {mechanism} (it offers "
                f"{' '.join(offered) or 'no SASL mechanism'}); choose the inbox's auth to match"
            )
        rejected: str | None = None
        for _attempt in range(2):
            try:
                token = await login.source.token(rejected=rejected)
            except OAuthError as exc:
                if exc.retriable:
                    raise ImapError(f"{self.where}: {exc}", retriable=True) from None
                raise AuthError(f"{self.where}: {exc}") from None
            response, challenge = await self._sasl(mechanism, username, token, login)
            if response.result == "OK":
                self.protocol.state = aioimaplib.AUTH
                await self._capability()
                return
            text = _text(response)
            self._refused(username, text)
            rejected = token
        why = f" ({challenge})" if challenge else ""
        raise AuthError(
            f"{self.where} rejected the OAuth2 token for {username!r} twice, a fresh one "
            f"included{why}: {text}. The token endpoint issues tokens this server does not "
            "accept (wrong account, scope or client); sign the inbox in again"
        )

    async def _sasl(
        self, mechanism: str, username: str, token: str, login: OAuthLogin
    ) -> tuple[Any, str]:
        """One AUTHENTICATE exchange; the tagged response and the error challenge's status."""
        ir = initial_response(
            login.mechanism, username, token, self.endpoint.host, self.endpoint.port
        )
        sasl = _SaslExchange(abort=abort_response(login.mechanism))
        args = [mechanism]
        if "SASL-IR" in self.capabilities:  # RFC 4959: the response rides on the command
            args.append(ir)
        else:
            sasl.pending = ir
        command = aioimaplib.Command(
            "AUTHENTICATE", self.protocol.new_tag(), *args, loop=self.protocol.loop
        )
        command.sasl = sasl
        response = await self._sign_in("AUTHENTICATE", self.protocol.execute(command, scrub=ir))
        return response, describe_challenge(sasl.challenge) if sasl.challenge else ""

    async def _enable(self) -> None:
        """ENABLE QRESYNC when offered (RFC 7162), so expunges arrive as VANISHED with UIDs.

        Without ENABLE or QRESYNC nothing is enabled and the live sync falls back to
        CONDSTORE (flag changes only) or plain refetching."""
        if not (self.has("ENABLE") and self.has("QRESYNC")):
            return
        response = await self._execute("ENABLE", "QRESYNC")
        enabled: set[str] = set()
        for line in response.lines:
            match = _ENABLED_RE.match(bytes(line))
            if match:
                enabled |= {w.upper() for w in match.group(1).decode("ascii", "replace").split()}
        if response.result != "OK" or "QRESYNC" not in enabled:
            log.info("%s: ENABLE QRESYNC not accepted; falling back to CONDSTORE", self.where)
        self.enabled = frozenset(enabled)

    async def _execute(self, name: str, *args: str, timeout: float | None = None) -> Any:
        command = aioimaplib.Command(name, self.protocol.new_tag(), *args, loop=self.protocol.loop)
        try:
            return await asyncio.wait_for(
                self.protocol.execute(command), timeout or self.endpoint.timeout
            )
        except BaseException as exc:
            raise _translate(
                exc, self.where, self.endpoint.host, name, timeout or self.endpoint.timeout
            ) from exc

    async def select(self, folder: str, *, readonly: bool = True) -> SelectedFolder:
        """EXAMINE (read-only: we never change flags) and read UIDVALIDITY/UIDNEXT/EXISTS."""
        response = await self._execute("EXAMINE" if readonly else "SELECT", _quote(folder))
        if response.result != "OK":
            raise ProtocolError(f"cannot open folder {folder!r}: {_text(response)}")
        # aioimaplib tracks SELECTED only through its own select(); EXAMINE is ours.
        self.protocol.state = aioimaplib.SELECTED
        codes: dict[str, int] = {}
        exists = 0
        for line in response.lines:
            raw = bytes(line)
            for key, value in _SELECT_CODE_RE.findall(raw):
                codes[key.decode()] = int(value)
            match = _EXISTS_RE.match(raw)
            if match:
                exists = int(match.group(1))
        if "UIDVALIDITY" not in codes:
            raise ProtocolError(f"{folder!r}: server sent no UIDVALIDITY")
        return SelectedFolder(
            folder,
            codes["UIDVALIDITY"],
            codes.get("UIDNEXT", 0),
            exists,
            codes.get("HIGHESTMODSEQ"),
        )

    async def list_folders(self) -> list[Folder]:
        """Every folder, with special-use attributes when the server offers them."""
        args = ['""', '"*"']
        if self.has("SPECIAL-USE"):
            args += ["RETURN", "(SPECIAL-USE)"]
        response = await self._execute("LIST", *args)
        if response.result != "OK":
            raise ProtocolError(f"LIST failed: {_text(response)}")
        return parse_list_lines(response.lines)

    async def uid_fetch(self, uid_set: str, items: str, timeout: float = 120.0) -> Any:
        """UID FETCH through our linear FETCH reader; ``timeout`` bounds silence, not size
        (the timer restarts on every line the server sends)."""
        command = FastFetchCommand(
            self.protocol.new_tag(),
            uid_set,
            items,
            prefix="UID",
            loop=self.protocol.loop,
            timeout=timeout,
        )
        try:
            response = await self.protocol.execute(command)
        except BaseException as exc:
            raise _translate(exc, self.where, self.endpoint.host, "UID FETCH", timeout) from exc
        if response.result != "OK":
            raise ProtocolError(f"UID FETCH {uid_set} failed: {_text(response)}")
        return response

    async def logout(self) -> None:
        try:
            await asyncio.wait_for(self.protocol.logout(), 5)
        except asyncio.CancelledError:
            raise  # a stop waits for nobody's LOGOUT, and must not be swallowed here
        except BaseException:  # noqa: BLE001 - logging out of a dead connection is fine
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now. Not ``close()``: on a TLS transport that sends close_notify
        and keeps the socket open until the server answers (up to 30 s), so a stopped service
        could still hold a server connection - and a slot of the five - long after it said
        it had stopped."""
        if self.protocol.transport is not None:
            self.protocol.transport.abort()


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(response: Any) -> str:
    lines = [bytes(line).decode("utf-8", "replace") for line in response.lines]
    return (lines[-1] if lines else response.result)[:200]


def _translate(
    exc: BaseException, where: str, host: str, phase: str, timeout: float
) -> BaseException:
    """Map socket/TLS/library failures to our typed errors, keeping other BaseExceptions."""
    if isinstance(exc, ImapError):
        return exc
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, socket.gaierror):
        return DnsError(
            f"cannot resolve the host name {host!r} ({exc.strerror}); check the IMAP server "
            "name in the inbox settings"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefusedByServerError(
            f"{where} refused the connection: nothing listens on that port. Check the IMAP "
            "port (usually 993 for TLS, 143 for STARTTLS) and any firewall"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aioimaplib.CommandTimeout):
        return ConnectTimeoutError(
            f"{where}: no answer to the {phase} within {timeout:g}s; the server may be down, "
            "overloaded, or a firewall drops the traffic"
        )
    if isinstance(exc, ssl.SSLError):
        return tls_error(exc, where, host)
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ProtocolError(f"{where}: the server dropped the connection during the {phase}")
    if isinstance(exc, OSError):
        return ProtocolError(f"{where}: connection error during the {phase}: {exc.strerror or exc}")
    if isinstance(exc, aioimaplib.AioImapException):
        return ProtocolError(f"{where}: IMAP error during the {phase}: {type(exc).__name__}")
    return ProtocolError(f"{where}: {type(exc).__name__} during the {phase}: {exc}")

"""One IMAP connection: TCP, TLS (implicit or STARTTLS), greeting checks, login.

We drive aioimaplib's protocol object directly instead of its ``IMAP4`` facade because we must
see the greeting (to refuse POP3 and Courier-IMAP), upgrade to TLS in place for STARTTLS
(``loop.start_tls``; aioimaplib has no STARTTLS), and turn every failure into a typed error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aioimaplib import aioimaplib

from producers.exceptions import (
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
from producers.folders import Folder, parse_list_lines

log = logging.getLogger(__name__)

POP3_PORTS = frozenset({110, 995})
_SELECT_CODE_RE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS_RE = re.compile(rb"^(\d+) EXISTS")

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


@dataclass(frozen=True)
class SelectedFolder:
    name: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None


def make_ssl_context(endpoint: ImapEndpoint) -> ssl.SSLContext:
    """Verify the chain and the host name unless the inbox explicitly allows otherwise."""
    ctx = ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)
    ctx.minimum_version = _TLS_VERSIONS[endpoint.tls_min_version]
    if endpoint.tls_min_version in ("TLSv1", "TLSv1.1"):
        # OpenSSL's default security level refuses TLS < 1.2; the inbox opted in.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if endpoint.allow_unverified_certificate:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_greeting(greeting: bytes, port: int) -> str | None:
    """Why this server is refused, or None. Pure, so it is unit-tested on its own."""
    text = greeting.decode("utf-8", "replace")
    if text.startswith("+OK") or port in POP3_PORTS:
        return (
            "this is a POP3 server; only IMAP is supported because the mail must stay on the "
            "server for replies to be logged. Use the server's IMAP port (usually 993)"
        )
    if "courier" in text.lower():
        return (
            "Courier-IMAP is not supported: replies cannot be reliably logged from it. "
            "Use a different IMAP server software"
        )
    if not text.startswith(("OK", "PREAUTH", "* OK", "* PREAUTH")):
        return f"unexpected greeting from server: {text[:120]!r}"
    return None


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus the greeting kept and checked before anything else."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        super().__init__(loop, self._lost)
        self.port = port
        self.greeting: bytes | None = None
        self.refusal: str | None = None
        self.failure: BaseException | None = None
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()

    def _lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.ready.set()  # wake a waiter that would otherwise hang on a dead socket

    async def welcome(self, command: bytes) -> None:
        self.greeting = bytes(command)
        self.refusal = check_greeting(self.greeting, self.port)
        if self.refusal:
            self.ready.set()
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super().welcome(command)
        except BaseException as exc:  # noqa: BLE001 - surfaced to connect() below
            self.failure = exc
        self.ready.set()


class ImapConnection:
    """An authenticated IMAP session. Use ``await ImapConnection.open(...)``."""

    def __init__(self, protocol: _Protocol, endpoint: ImapEndpoint) -> None:
        self.protocol = protocol
        self.endpoint = endpoint

    @property
    def capabilities(self) -> set[str]:
        return {c.upper() for c in self.protocol.capabilities}

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @classmethod
    async def open(cls, endpoint: ImapEndpoint, username: str, password: str) -> ImapConnection:
        """Connect, secure, check and log in; every failure is a typed ImapError."""
        loop = asyncio.get_running_loop()
        ctx = make_ssl_context(endpoint)
        protocol = _Protocol(loop, endpoint.port)
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    endpoint.host,
                    endpoint.port,
                    ssl=ctx if endpoint.security == "tls" else None,
                    server_hostname=endpoint.host if endpoint.security == "tls" else None,
                ),
                endpoint.timeout,
            )
            await asyncio.wait_for(protocol.ready.wait(), endpoint.timeout)
        except BaseException as exc:
            raise _translate(exc, where) from exc
        conn = cls(protocol, endpoint)
        try:
            conn._check_ready(where)
            if endpoint.security == "starttls":
                await conn._starttls(ctx, where)
            if "IMAP4REV1" not in conn.capabilities:
                raise UnsupportedServerError(f"{where} does not speak IMAP4rev1")
            await conn._login(username, password, where)
        except BaseException:
            conn.abort()
            raise
        return conn

    def _check_ready(self, where: str) -> None:
        if self.protocol.refusal:
            raise UnsupportedServerError(f"{where}: {self.protocol.refusal}")
        if self.protocol.failure is not None:
            raise UnsupportedServerError(f"{where}: {self.protocol.failure}")
        if self.protocol.closed.is_set():
            raise ProtocolError(f"{where} closed the connection during the greeting")

    async def _starttls(self, ctx: ssl.SSLContext, where: str) -> None:
        if "STARTTLS" not in self.capabilities:
            raise CapabilityError(
                f"{where} does not offer STARTTLS, and plain-text IMAP is not allowed; "
                "use the implicit-TLS port (usually 993)"
            )
        response = await self._execute("STARTTLS")
        if response.result != "OK":
            raise TlsError(f"{where} refused STARTTLS: {_text(response)}")
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(
                    self.protocol.transport, self.protocol, ctx, server_hostname=self.endpoint.host
                ),
                self.endpoint.timeout,
            )
        except BaseException as exc:
            raise _translate(exc, where) from exc
        self.protocol.transport = transport
        # RFC 3501 6.2.1: capabilities learned before STARTTLS must be discarded.
        await asyncio.wait_for(self.protocol.capability(), self.endpoint.timeout)

    async def _login(self, username: str, password: str, where: str) -> None:
        if "LOGINDISABLED" in self.capabilities:
            raise CapabilityError(f"{where} has LOGIN disabled on this connection")
        try:
            response = await asyncio.wait_for(
                self.protocol.login(username, password), self.endpoint.timeout
            )
        except BaseException as exc:
            raise _translate(exc, where) from exc
        if response.result != "OK":
            raise AuthError(
                f"{where} rejected the login for {username!r}: {_text(response)}. The password "
                "may have changed or access was revoked; reconnect the inbox with new credentials"
            )
        # Servers often send new capabilities after login; ask again to be sure.
        await asyncio.wait_for(self.protocol.capability(), self.endpoint.timeout)

    async def _execute(self, name: str, *args: str, timeout: float | None = None) -> Any:
        command = aioimaplib.Command(name, self.protocol.new_tag(), *args, loop=self.protocol.loop)
        try:
            return await asyncio.wait_for(
                self.protocol.execute(command), timeout or self.endpoint.timeout
            )
        except BaseException as exc:
            raise _translate(exc, f"{self.endpoint.host}:{self.endpoint.port}") from exc

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
        try:
            response = await asyncio.wait_for(
                self.protocol.fetch(uid_set, items, by_uid=True, timeout=timeout), timeout
            )
        except BaseException as exc:
            raise _translate(exc, f"{self.endpoint.host}:{self.endpoint.port}") from exc
        if response.result != "OK":
            raise ProtocolError(f"UID FETCH {uid_set} failed: {_text(response)}")
        return response

    async def logout(self) -> None:
        try:
            await asyncio.wait_for(self.protocol.logout(), 5)
        except BaseException:  # noqa: BLE001 - logging out of a dead connection is fine
            pass
        self.abort()

    def abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(response: Any) -> str:
    lines = [bytes(line).decode("utf-8", "replace") for line in response.lines]
    return (lines[-1] if lines else response.result)[:200]


def _translate(exc: BaseException, where: str) -> BaseException:
    """Map socket/TLS/library failures to our typed errors, keeping other BaseExceptions."""
    if isinstance(exc, ImapError):
        return exc
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, socket.gaierror):
        return DnsError(f"cannot resolve {where.rsplit(':', 1)[0]}: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefusedByServerError(
            f"{where} refused the connection: is the port right and open?"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectTimeoutError(f"{where} did not answer in time")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(f"{where}: certificate check failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return TlsError(f"{where}: TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, OSError):
        return ProtocolError(f"{where}: connection error: {exc}")
    if isinstance(exc, aioimaplib.AioImapException):
        return ProtocolError(f"{where}: {exc}")
    return ProtocolError(f"{where}: {type(exc).__name__}: {exc}")

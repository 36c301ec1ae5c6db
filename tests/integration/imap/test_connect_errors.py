"""Connecting to real servers: every failure is typed, says which check failed, and never
contains the password.

Dovecot plays the good, the wrong-certificate, the self-signed and the limited server (see
infra/dovecot.py). Servers Dovecot cannot play (Courier-IMAP, POP3, an old TLS stack, a
socket that never speaks) are tiny asyncio servers on loopback: different servers, not mocks.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

import pytest

from inboxstream.core.kafka import ensure_topics, make_consumer, make_producer
from inboxstream.core.settings import Settings
from inboxstream.imap.connection import ImapConnection, ImapEndpoint
from inboxstream.imap.exceptions import (
    AuthError,
    CapabilityError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    DnsError,
    ProtocolError,
    TlsError,
    UnsupportedServerError,
)
from inboxstream.imap.folders import assign_roles
from inboxstream.infra import dovecot
from inboxstream.infra.common import service_dir
from inboxstream.producers.folder_sync import sync_folder
from inboxstream.producers.publish import EventPublisher
from tests.helpers.services import MailUser

Security = Literal["tls", "starttls"]


def _endpoint(
    ep: dovecot.DovecotEndpoints, host: str, security: Security = "tls", **kw: object
) -> ImapEndpoint:
    port = ep.imaps_port if security == "tls" else ep.imap_port
    return ImapEndpoint(host, port, security, ca_file=ep.ca_cert, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_implicit_tls_and_starttls_connect_with_every_extension(
    dovecot_server: dovecot.DovecotEndpoints, mail_user: MailUser, security: Security
) -> None:
    ep = _endpoint(dovecot_server, dovecot_server.tls_hostname, security)
    conn = await ImapConnection.open(ep, mail_user.name, mail_user.password)
    try:
        features = conn.features
        assert features.imap4rev1 and features.idle and features.condstore
        assert features.special_use and features.uidplus and features.enable
        assert features.qresync and features.qresync_enabled  # ENABLE QRESYNC was accepted
        assert features.missing() == []
        assert conn.server_id.get("name") == "Dovecot"  # ID sent, answer read
        roles = assign_roles(await conn.list_folders())
        assert roles["INBOX"] == "inbox" and roles["Sent"] == "sent"
        tls = conn.protocol.transport.get_extra_info("ssl_object")
        assert tls is not None and tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        await conn.logout()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_wrong_certificate_host_is_refused(
    dovecot_server: dovecot.DovecotEndpoints, mail_user: MailUser, security: Security
) -> None:
    ep = _endpoint(dovecot_server, dovecot_server.wrong_cert_host, security)
    with pytest.raises(TlsError) as info:
        await ImapConnection.open(ep, mail_user.name, mail_user.password)
    assert info.value.check == "hostname" and not info.value.retriable
    assert "host name check failed" in str(info.value)
    assert dovecot_server.wrong_cert_host in str(info.value)
    assert mail_user.password not in str(info.value)


async def test_self_signed_certificate_needs_the_opt_in(
    dovecot_server: dovecot.DovecotEndpoints, mail_user: MailUser
) -> None:
    ep = _endpoint(dovecot_server, dovecot_server.self_signed_host)
    with pytest.raises(TlsError) as info:
        await ImapConnection.open(ep, mail_user.name, mail_user.password)
    assert info.value.check == "self_signed" and not info.value.retriable
    assert "self-signed" in str(info.value) and "allow_unverified_certificate" in str(info.value)

    trusting = _endpoint(
        dovecot_server, dovecot_server.self_signed_host, allow_unverified_certificate=True
    )
    conn = await ImapConnection.open(trusting, mail_user.name, mail_user.password)
    try:
        assert (await conn.select("INBOX")).exists == 0
    finally:
        await conn.logout()


async def test_a_certificate_from_an_unknown_authority_is_untrusted(
    dovecot_server: dovecot.DovecotEndpoints, mail_user: MailUser
) -> None:
    """Without our CA file the (valid) Dovecot certificate has an unknown issuer."""
    ep = ImapEndpoint(dovecot_server.tls_hostname, dovecot_server.imaps_port, timeout=10)
    with pytest.raises(TlsError) as info:
        await ImapConnection.open(ep, mail_user.name, mail_user.password)
    assert info.value.check == "untrusted_issuer"
    assert "issuer is not trusted" in str(info.value)


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_wrong_password_is_an_auth_error_that_is_not_retried(
    dovecot_server: dovecot.DovecotEndpoints, mail_user: MailUser, security: Security
) -> None:
    wrong = mail_user.password + "-wrong"
    ep = _endpoint(dovecot_server, dovecot_server.tls_hostname, security)
    with pytest.raises(AuthError) as info:
        await ImapConnection.open(ep, mail_user.name, wrong)
    message = str(info.value)
    assert not info.value.retriable and info.value.kind == "auth"
    assert "rejected the login" in message and mail_user.name in message
    assert "AUTHENTICATIONFAILED" in message
    assert wrong not in message and mail_user.password not in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_port() -> None:
    port = _free_port()
    with pytest.raises(ConnectionRefusedByServerError) as info:
        await ImapConnection.open(ImapEndpoint("127.0.0.1", port, timeout=5), "u", "secret-pw")
    assert info.value.retriable
    assert f"127.0.0.1:{port} refused the connection" in str(info.value)


async def test_unknown_host_is_a_dns_error() -> None:
    host = "imap.no-such-host.invalid"  # RFC 6761: .invalid never resolves
    with pytest.raises(DnsError) as info:
        await ImapConnection.open(ImapEndpoint(host, 993, timeout=10), "u", "secret-pw")
    assert info.value.retriable and info.value.kind == "dns"
    assert f"cannot resolve the host name {host!r}" in str(info.value)


@pytest.mark.parametrize("port", [110, 995])
async def test_pop3_port_is_refused_before_connecting(port: int) -> None:
    with pytest.raises(UnsupportedServerError) as info:
        await ImapConnection.open(ImapEndpoint("127.0.0.1", port, timeout=5), "u", "secret-pw")
    assert not info.value.retriable
    assert f"port {port} is a POP3 port" in str(info.value) and "IMAP" in str(info.value)


# --- servers Dovecot cannot play -----------------------------------------------------------


@dataclass
class ScriptedServer:
    """A loopback server that sends ``greeting`` and answers commands from ``replies``
    (command name -> untagged lines); it records every command line it received.

    Blocking sockets in a thread, like a classic server: OpenSSL then sends its TLS alerts
    before closing (asyncio's server aborts the socket and the alert is lost)."""

    greeting: bytes | None
    replies: dict[str, list[bytes]] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    received: list[bytes] = field(default_factory=list)
    port: int = 0

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener closed: the test is over
            with conn:
                try:
                    self.handle(conn)
                except (OSError, ssl.SSLError):
                    pass

    def handle(self, conn: socket.socket) -> None:
        sock = self.tls.wrap_socket(conn, server_side=True) if self.tls else conn
        if self.greeting is None:
            while sock.recv(4096):  # accept, read whatever comes, never say a word
                pass
            return
        sock.sendall(self.greeting + b"\r\n")
        reader = sock.makefile("rb")
        while line := reader.readline():
            self.received.append(line.rstrip())
            tag, _, rest = line.decode().strip().partition(" ")
            name = rest.split(" ", 1)[0].upper()
            out = b"".join(b"* " + reply + b"\r\n" for reply in self.replies.get(name, []))
            ok = b"NO unsupported" if name not in self.replies else b"OK done"
            sock.sendall(out + tag.encode() + b" " + ok + b"\r\n")


@contextmanager
def serving(server: ScriptedServer) -> Iterator[ScriptedServer]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server.port = listener.getsockname()[1]
    thread = threading.Thread(target=server.serve, args=(listener,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


async def open_scripted(fake: ScriptedServer, ca_file: Path, security: Security = "tls") -> None:
    """Log in as u / secret-pw to ``fake``, served just for this; the tests expect a refusal."""
    with serving(fake):
        ep = ImapEndpoint("127.0.0.1", fake.port, security, ca_file=ca_file, timeout=5)
        await ImapConnection.open(ep, "u", "secret-pw")


def _server_tls(configure: Callable[[ssl.SSLContext], None] | None = None) -> ssl.SSLContext:
    """Our Dovecot's certificate (valid for 127.0.0.1), so only the behaviour differs."""
    tls = service_dir("dovecot") / "tls"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls / "server.pem", tls / "server.key")
    if configure:
        configure(ctx)
    return ctx


COURIER_GREETING = (
    b"* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT SORT QUOTA "
    b"IDLE STARTTLS] Courier-IMAP ready. Copyright 1998-2018 Double Precision, Inc.  "
    b"See COPYING for distribution information."
)


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_courier_greeting_is_refused(
    dovecot_server: dovecot.DovecotEndpoints, security: Security
) -> None:
    fake = ScriptedServer(COURIER_GREETING, tls=_server_tls() if security == "tls" else None)
    with pytest.raises(UnsupportedServerError) as info:
        await open_scripted(fake, dovecot_server.ca_cert, security)
    assert not info.value.retriable
    assert "Courier-IMAP is not supported" in str(info.value)
    assert fake.received == []  # refused on the greeting: not even CAPABILITY was sent


async def test_courier_identified_by_id_is_refused_before_login(
    dovecot_server: dovecot.DovecotEndpoints,
) -> None:
    fake = ScriptedServer(
        b"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] IMAP server ready.",
        {
            "CAPABILITY": [b"CAPABILITY IMAP4rev1 ID AUTH=PLAIN"],
            "ID": [b'ID ("NAME" "Courier-IMAP" "VENDOR" "Double Precision, Inc.")'],
            "LOGIN": [],
        },
        tls=_server_tls(),
    )
    with pytest.raises(UnsupportedServerError) as info:
        await open_scripted(fake, dovecot_server.ca_cert)
    assert "Courier-IMAP is not supported" in str(info.value)
    sent = b"\n".join(fake.received)
    assert b' ID ( "name" "inboxstream"' in sent
    assert b"LOGIN" not in sent and b"secret-pw" not in sent  # credentials never sent


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_pop3_greeting_is_refused(
    dovecot_server: dovecot.DovecotEndpoints, security: Security
) -> None:
    fake = ScriptedServer(
        b"+OK POP3 server ready <1896.697170952@pop.example>",
        tls=_server_tls() if security == "tls" else None,
    )
    with pytest.raises(UnsupportedServerError) as info:
        await open_scripted(fake, dovecot_server.ca_cert, security)
    assert not info.value.retriable
    assert "this is a POP3 server" in str(info.value)


async def test_a_server_without_imap4rev1_is_refused(
    dovecot_server: dovecot.DovecotEndpoints,
) -> None:
    fake = ScriptedServer(
        b"* OK IMAP2bis server ready",
        {"CAPABILITY": [b"CAPABILITY IMAP4 AUTH=PLAIN"], "LOGIN": []},
        tls=_server_tls(),
    )
    with pytest.raises(CapabilityError) as info:
        await open_scripted(fake, dovecot_server.ca_cert)
    assert not info.value.retriable
    assert "IMAP4rev1" in str(info.value)
    assert not any(b"LOGIN" in line for line in fake.received)


async def test_a_bye_greeting_is_retriable(dovecot_server: dovecot.DovecotEndpoints) -> None:
    """A busy server says BYE at once: try again later, it is not a wrong configuration."""
    fake = ScriptedServer(b"* BYE Too many connections, try later", tls=_server_tls())
    with pytest.raises(ProtocolError) as info:
        await open_scripted(fake, dovecot_server.ca_cert)
    assert info.value.retriable
    assert "closed the session at once" in str(info.value) and "Too many connections" in str(
        info.value
    )


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_a_server_that_never_speaks_times_out(security: Security) -> None:
    fake = ScriptedServer(None)  # accepts TCP, then silence: no TLS handshake, no greeting
    with serving(fake):
        ep = ImapEndpoint("127.0.0.1", fake.port, security, timeout=0.5)
        with pytest.raises(ConnectTimeoutError) as info:
            await ImapConnection.open(ep, "u", "secret-pw")
    assert info.value.retriable and info.value.kind == "timeout"
    phase = "TLS handshake" if security == "tls" else "IMAP greeting"
    assert phase in str(info.value) and "within 0.5s" in str(info.value)


def _tls11_only(ctx: ssl.SSLContext) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")


async def test_tls_1_1_server_needs_the_legacy_opt_in(
    dovecot_server: dovecot.DovecotEndpoints,
) -> None:
    fake = ScriptedServer(
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] old server ready",
        {"CAPABILITY": [b"CAPABILITY IMAP4rev1 AUTH=PLAIN"], "LOGIN": [], "LOGOUT": []},
        tls=_server_tls(_tls11_only),
    )
    with serving(fake):
        ep = ImapEndpoint("127.0.0.1", fake.port, ca_file=dovecot_server.ca_cert, timeout=5)
        with pytest.raises(TlsError) as info:
            await ImapConnection.open(ep, "u", "secret-pw")
        assert info.value.check == "protocol_version"
        assert "allow_legacy_tls" in str(info.value)

        legacy = ImapEndpoint(
            "127.0.0.1",
            fake.port,
            ca_file=dovecot_server.ca_cert,
            timeout=5,
            tls_min_version="TLSv1",
        )
        conn = await ImapConnection.open(legacy, "u", "secret-pw")
        try:
            tls = conn.protocol.transport.get_extra_info("ssl_object")
            assert tls.version() == "TLSv1.1"
            assert conn.features.missing() == [
                "IDLE",
                "CONDSTORE",
                "QRESYNC",
                "SPECIAL-USE",
                "UIDPLUS",
                "ENABLE",
            ]
        finally:
            await conn.logout()


# --- the limited-capability Dovecot ---------------------------------------------------------


def _mail(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ana Silva <ana@acme.example>"
    msg["To"] = "owner@inboxstream.test"
    msg["Subject"] = f"limited server message {i}"
    msg["Message-ID"] = f"<limited-{i}@acme.example>"
    msg.set_content(f"body {i}")
    return msg.as_bytes()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_limited_server_falls_back_and_still_syncs(
    dovecot_server: dovecot.DovecotEndpoints,
    mail_user: MailUser,
    settings: Settings,
    security: Security,
) -> None:
    for i in range(3):
        dovecot.deliver(mail_user.name, _mail(i))
    ep = _endpoint(dovecot_server, dovecot_server.limited_host, security)
    conn = await ImapConnection.open(ep, mail_user.name, mail_user.password)
    await ensure_topics(settings.kafka, settings.topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        features = conn.features
        assert features.imap4rev1 and features.id
        assert features.missing() == [
            "IDLE",
            "CONDSTORE",
            "QRESYNC",
            "SPECIAL-USE",
            "UIDPLUS",
            "ENABLE",
        ]
        assert not features.qresync_enabled and conn.enabled == frozenset()
        folders = await conn.list_folders()
        assert not any("\\Sent" in f.flags for f in folders)  # no special-use flags here
        roles = assign_roles(folders)
        assert roles["Sent"] == "sent"  # found by name instead
        publisher = EventPublisher(producer, settings.topics)
        result = await sync_folder(
            conn, publisher, inbox_id=mail_user.name, folder="INBOX", role="inbox"
        )
        assert result.published == 3 and result.folder.highestmodseq is None
        await producer.flush()
    finally:
        await producer.stop()
        await conn.logout()

    consumer = make_consumer(settings.kafka, settings.topics.messages.name, group_id=None)
    await consumer.start()
    seen = 0
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while seen < 3 and asyncio.get_running_loop().time() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                seen += len(part)
    finally:
        await consumer.stop()
    assert seen == 3

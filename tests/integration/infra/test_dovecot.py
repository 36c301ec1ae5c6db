"""The local Dovecot behaves as the producers' tests expect: TLS, users, folders, extensions."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid

import aioimaplib
import pytest

from inboxstream.infra import dovecot
from inboxstream.infra.common import InfraError, service_dir

Endpoints = dovecot.DovecotEndpoints
PASSWORD = "s3cret: with spaces"
LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


def ca_context(ep: Endpoints) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ep.ca_cert))


def message(subject: str, *, in_reply_to: str | None = None) -> tuple[str, bytes]:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@example.com>"
    msg["To"] = "someone@example.com"
    msg["Subject"] = subject
    msg_id = make_msgid(domain="inboxstream.test")
    msg["Message-ID"] = msg_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(f"Body of {subject}\n")
    return msg_id, msg.as_bytes()


def imaps(ep: Endpoints, host: str | None = None) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(host or ep.host, ep.imaps_port, ssl_context=ca_context(ep), timeout=10)


def list_mailboxes(conn: imaplib.IMAP4, *select_opts: str) -> dict[str, set[str]]:
    """LIST (or LIST (<select_opts>)) as {mailbox name: attributes}."""
    args = (f"({' '.join(select_opts)})",) if select_opts else ()
    typ, dat = conn._simple_command("LIST", *args, '""', "*")
    assert typ == "OK", dat
    _, lines = conn._untagged_response(typ, dat, "LIST")
    result: dict[str, set[str]] = {}
    for line in lines:
        if not isinstance(line, bytes):
            continue
        match = LIST_LINE.match(line)
        assert match, line
        name = match["name"].decode()
        result[name.strip('"')] = set(match["flags"].decode().split())
    return result


@pytest.fixture
def user(dovecot_server: Endpoints, unique: str) -> Iterator[str]:
    name = f"u{unique}"
    dovecot.add_user(name, PASSWORD)
    yield name
    dovecot.remove_user(name)


def test_status_reports_running(dovecot_server: Endpoints) -> None:
    st = dovecot.status()
    assert st.installed and st.running and st.pid
    assert st.endpoints["imaps"] == f"{dovecot_server.host}:{dovecot_server.imaps_port}"
    assert dovecot_server.ca_cert.is_file()
    assert dovecot.start() is False  # already running: idempotent


def test_implicit_tls_login_and_capabilities(dovecot_server: Endpoints, user: str) -> None:
    with imaps(dovecot_server) as conn:
        assert conn.login(user, PASSWORD)[0] == "OK"
        typ, dat = conn.capability()
        assert typ == "OK"
        caps = set(dat[0].decode().upper().split())
        missing = {c for c in dovecot.FULL_CAPABILITIES if c not in caps}
        assert not missing, caps
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_starttls_login_verified_against_ca(dovecot_server: Endpoints, user: str) -> None:
    with imaplib.IMAP4(dovecot_server.host, dovecot_server.imap_port, timeout=10) as conn:
        assert "STARTTLS" in conn.capabilities
        conn.starttls(ca_context(dovecot_server))
        assert conn.login(user, PASSWORD)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"


class UntrustedIMAP4(imaplib.IMAP4):
    """Connects from another loopback address, so Dovecot does not treat the link as secure."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        source = (dovecot.UNTRUSTED_SOURCE, 0)
        return socket.create_connection((self.host, self.port), timeout, source_address=source)


def test_plaintext_login_disabled_before_starttls(dovecot_server: Endpoints, user: str) -> None:
    with UntrustedIMAP4(dovecot_server.host, dovecot_server.imap_port, timeout=10) as conn:
        assert "LOGINDISABLED" in conn.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(user, PASSWORD)
    with UntrustedIMAP4(dovecot_server.host, dovecot_server.imap_port, timeout=10) as conn:
        conn.starttls(ca_context(dovecot_server))
        assert conn.login(user, PASSWORD)[0] == "OK"


def test_limited_listener_hides_extensions(dovecot_server: Endpoints, user: str) -> None:
    hidden = {"IDLE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "UIDPLUS", "ENABLE"}
    with imaplib.IMAP4(dovecot_server.limited_host, dovecot_server.imap_port, timeout=10) as conn:
        pre = set(conn.capabilities)
        assert "STARTTLS" in pre
        conn.starttls(ca_context(dovecot_server))  # the cert also names 127.0.0.2
        assert conn.login(user, PASSWORD)[0] == "OK"
        post = set(conn.capability()[1][0].decode().upper().split())
    for caps in (pre, post):
        assert not caps & hidden, caps
        assert not any(c.startswith("THREAD") for c in caps), caps
    assert post == set(dovecot.LIMITED_CAPABILITY.upper().split())
    with imaps(dovecot_server, dovecot_server.limited_host) as conn:
        conn.login(user, PASSWORD)
        boxes = list_mailboxes(conn)
    # Same folders, but no special-use attributes either.
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(boxes)
    assert not any(flags & {"\\Sent", "\\Drafts", "\\Trash"} for flags in boxes.values())


def test_special_use_folders(dovecot_server: Endpoints, user: str) -> None:
    with imaps(dovecot_server) as conn:
        conn.login(user, PASSWORD)
        special = list_mailboxes(conn, "SPECIAL-USE")
    assert special == {
        "Sent": {"\\Sent"},
        "Drafts": {"\\Drafts"},
        "Trash": {"\\Trash"},
        "Junk": {"\\Junk"},
        "Archive": {"\\Archive"},
    }


def test_sent_folder_without_special_use(dovecot_server: Endpoints, unique: str) -> None:
    name = f"p{unique}"
    dovecot.add_user(name, PASSWORD, sent_folder="Sent Items", special_use=False)
    try:
        with imaps(dovecot_server) as conn:
            conn.login(name, PASSWORD)
            boxes = list_mailboxes(conn)
            special = list_mailboxes(conn, "SPECIAL-USE")
        assert set(boxes) == {"INBOX", "Sent Items"}
        assert not boxes["Sent Items"] & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk"}
        assert special == {}
    finally:
        dovecot.remove_user(name)


def test_special_use_sent_folder_with_other_name(dovecot_server: Endpoints, unique: str) -> None:
    name = f"g{unique}"
    dovecot.add_user(name, PASSWORD, sent_folder="Gesendet")
    try:
        with imaps(dovecot_server) as conn:
            conn.login(name, PASSWORD)
            special = list_mailboxes(conn, "SPECIAL-USE")
        assert special["Gesendet"] == {"\\Sent"}
        assert "Sent" not in special
    finally:
        dovecot.remove_user(name)
    with pytest.raises(ValueError):
        dovecot.add_user(name, PASSWORD, sent_folder="Sent Items", special_use=True)


def test_deliver_lands_in_inbox(dovecot_server: Endpoints, user: str) -> None:
    msg_id, raw = message("hello via lmtp")
    dovecot.deliver(user, raw)
    with imaps(dovecot_server) as conn:
        conn.login(user, PASSWORD)
        conn.select("INBOX", readonly=True)
        typ, dat = conn.uid("SEARCH", "HEADER", "Message-ID", msg_id)
        assert typ == "OK"
        uids = dat[0].split()
        assert len(uids) == 1
        typ, dat = conn.uid("FETCH", uids[0].decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        assert b"hello via lmtp" in dat[0][1]


def test_deliver_to_unknown_user_fails(dovecot_server: Endpoints, unique: str) -> None:
    with pytest.raises(InfraError):
        dovecot.deliver(f"nobody{unique}", message("lost")[1])


def test_thread_references(dovecot_server: Endpoints, user: str) -> None:
    root_id, root = message("thread root")
    dovecot.deliver(user, root)
    dovecot.deliver(user, message("Re: thread root", in_reply_to=root_id)[1])
    dovecot.deliver(user, message("unrelated")[1])
    with imaps(dovecot_server) as conn:
        conn.login(user, PASSWORD)
        conn.select("INBOX", readonly=True)
        typ, dat = conn.thread("REFERENCES", "UTF-8", "ALL")
        assert typ == "OK"
        assert dat[0] == b"(1 2)(3)"


def test_wrong_host_certificate_fails_verification(dovecot_server: Endpoints) -> None:
    ctx = ca_context(dovecot_server)
    assert ctx.check_hostname
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        imaps(dovecot_server, dovecot_server.wrong_cert_host)
    # Same CA, so it verifies once we ask for the name it was issued to.
    with (
        socket.create_connection(
            (dovecot_server.wrong_cert_host, dovecot_server.imaps_port), timeout=10
        ) as raw,
        ctx.wrap_socket(raw, server_hostname=dovecot_server.wrong_hostname) as tls,
    ):
        assert tls.recv(100).startswith(b"* OK")


def test_self_signed_certificate_fails_verification(dovecot_server: Endpoints) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed"):
        imaps(dovecot_server, dovecot_server.self_signed_host)


def test_who_counts_connections(dovecot_server: Endpoints, user: str) -> None:
    conns = [imaps(dovecot_server) for _ in range(2)]
    try:
        for conn in conns:
            conn.login(user, PASSWORD)
        deadline = time.monotonic() + 5
        while dovecot.who(user) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dovecot.who(user) == 2
    finally:
        for conn in conns:
            conn.logout()
    deadline = time.monotonic() + 5
    while dovecot.who(user) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dovecot.who(user) == 0


def test_wrong_password_fails_fast(dovecot_server: Endpoints, user: str) -> None:
    with imaps(dovecot_server) as conn:
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(user, "not the password")
        assert time.monotonic() - started < 1.0


def test_user_changes_apply_without_restart(dovecot_server: Endpoints, unique: str) -> None:
    name = f"r{unique}"
    pid = dovecot.status().pid
    dovecot.add_user(name, "first")
    with imaps(dovecot_server) as conn:
        assert conn.login(name, "first")[0] == "OK"
    dovecot.add_user(name, "second")
    with imaps(dovecot_server) as conn, pytest.raises(imaplib.IMAP4.error):
        conn.login(name, "first")
    with imaps(dovecot_server) as conn:
        assert conn.login(name, "second")[0] == "OK"
    dovecot.remove_user(name, wait=True)
    with imaps(dovecot_server) as conn, pytest.raises(imaplib.IMAP4.error):
        conn.login(name, "second")
    assert dovecot.status().pid == pid


def test_auth_socket_speaks_dovecot_sasl(dovecot_server: Endpoints, user: str) -> None:
    """The socket Postfix will use for SMTP AUTH accepts our users (Dovecot auth protocol)."""
    assert dovecot_server.auth_socket.is_socket()
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(dovecot_server.auth_socket))
        sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
        sock.sendall(f"AUTH\t1\tPLAIN\tservice=smtp\tresp={plain}\n".encode())
        data = b""
        while b"\nOK\t1" not in data and b"\nFAIL\t1" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert b"\nOK\t1\tuser=" + user.encode() in data


def test_doveadm_uses_our_instance(dovecot_server: Endpoints, user: str) -> None:
    out = dovecot.doveadm("user", user)
    assert str(service_dir("dovecot") / "mail" / user) in out


async def _tls_client(dovecot_server: Endpoints) -> aioimaplib.IMAP4_SSL:
    """aioimaplib over implicit TLS, trusting our CA, greeted."""
    client = aioimaplib.IMAP4_SSL(
        host=dovecot_server.host,
        port=dovecot_server.imaps_port,
        ssl_context=ca_context(dovecot_server),
        timeout=10,
    )
    await client.wait_hello_from_server()
    return client


async def test_aioimaplib_over_tls(dovecot_server: Endpoints, user: str) -> None:
    _, raw = message("for aioimaplib")
    dovecot.deliver(user, raw)
    client = await _tls_client(dovecot_server)
    try:
        assert (await client.login(user, PASSWORD)).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        resp = await client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert resp.result == "OK"
        assert any(b"for aioimaplib" in bytes(line) for line in resp.lines)
    finally:
        await client.logout()


async def test_idle_sees_lmtp_delivery(dovecot_server: Endpoints, user: str) -> None:
    client = await _tls_client(dovecot_server)
    try:
        assert (await client.login(user, PASSWORD)).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        idle = await client.idle_start(timeout=20)
        dovecot.deliver(user, message("wake up")[1])
        pushed = await client.wait_server_push(timeout=10)
        client.idle_done()
        assert (await asyncio.wait_for(idle, 5)).result == "OK"
        assert b"1 EXISTS" in pushed, pushed
    finally:
        await client.logout()

"""A local Dovecot 2.3 (IMAP + LMTP) from Debian packages, with its own config and TLS certs.

Tests and the demo need a real IMAP server with the extensions the producers use (IDLE,
CONDSTORE/QRESYNC, SPECIAL-USE, ...), a way to drop mail into it (LMTP) and TLS that can be
verified against a CA we control. Everything lives under ``service_dir("dovecot")``; the
distribution's /etc/dovecot config and init scripts are never used.

Endpoints (all loopback; Linux routes the whole 127.0.0.0/8 to ``lo``):

* ``127.0.0.1`` IMAP+STARTTLS / IMAPS / LMTP: full capabilities, cert from our CA for
  ``localhost``, ``127.0.0.1`` and ``127.0.0.2``.
* ``127.0.0.2`` IMAP / IMAPS: the same users and mail, but a minimal ``imap_capability``
  (no IDLE, CONDSTORE, QRESYNC, SPECIAL-USE, UIDPLUS, ENABLE, THREAD).
* ``127.0.0.3`` IMAP / IMAPS: cert from our CA for ``wrong.example`` (hostname check fails).
* ``127.0.0.4`` IMAP / IMAPS: self-signed cert for ``localhost`` (chain check fails).
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import re
import shutil
import smtplib
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inboxstream.infra.common import (
    InfraError,
    ServiceStatus,
    apt_install,
    dpkg_installed,
    env_port,
    log_dir,
    port_open,
    read_pid,
    run,
    service_dir,
    spawn,
    stop_pid,
    wait_for_port,
)

NAME = "dovecot"
PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "openssl")
MAIL_USER = "vmail"

HOST = "127.0.0.1"
LIMITED_HOST = "127.0.0.2"
WRONG_CERT_HOST = "127.0.0.3"
SELF_SIGNED_HOST = "127.0.0.4"
TLS_HOSTNAME = "localhost"
WRONG_HOSTNAME = "wrong.example"
#: Dovecot treats a client whose address equals the server's (127.0.0.1 -> 127.0.0.1) as
#: "secured" and allows plaintext LOGIN; bind a client to this source address to see
#: LOGINDISABLED before STARTTLS.
UNTRUSTED_SOURCE = "127.0.0.9"

DEFAULT_IMAP_PORT = 10143
DEFAULT_IMAPS_PORT = 10993
DEFAULT_LMTP_PORT = 10024
DEFAULT_OAUTH_PORT = 10480

#: Extensions the full listener must advertise after login (checked by the tests).
FULL_CAPABILITIES = (
    "IDLE",
    "CONDSTORE",
    "QRESYNC",
    "THREAD=REFERENCES",
    "SPECIAL-USE",
    "UIDPLUS",
    "ENABLE",
    "ID",
    "NAMESPACE",
)
#: What the limited listener advertises, before and after login (STARTTLS/AUTH= are added
#: by Dovecot before login). Deliberately without IDLE, CONDSTORE, QRESYNC, SPECIAL-USE,
#: UIDPLUS, ENABLE and THREAD, like an old or minimal server.
LIMITED_CAPABILITY = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID LITERAL+ NAMESPACE UNSELECT CHILDREN"
SPECIAL_USE_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")

_TEMPLATE = Path(__file__).resolve().parent / "templates" / "dovecot-server.conf.in"
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,199}$")


@dataclass(frozen=True)
class DovecotEndpoints:
    """Where to reach our Dovecot and what to trust.

    ``host`` (127.0.0.1) serves STARTTLS on ``imap_port`` and implicit TLS on ``imaps_port``
    with a cert for ``tls_hostname``/127.0.0.1/127.0.0.2 signed by ``ca_cert``; LMTP is on
    ``host:lmtp_port``. ``limited_host``, ``wrong_cert_host`` and ``self_signed_host`` serve the
    same IMAP ports: minimal capabilities / a CA-signed cert for ``wrong_hostname`` / a
    self-signed cert (not from the CA) for localhost. ``auth_socket`` is Dovecot's SASL socket
    for Postfix (``smtpd_sasl_type = dovecot``). Bind a client to ``untrusted_source`` to be
    treated as a remote client (LOGINDISABLED until STARTTLS). ``oauth_introspection_url`` is
    where Dovecot's oauth2 passdb checks XOAUTH2/OAUTHBEARER tokens (RFC 7662, POST): nothing
    of ours serves it; the test suite runs a token server there (tests/helpers/oauth_server.py).
    """

    host: str
    imap_port: int
    imaps_port: int
    lmtp_port: int
    ca_cert: Path
    limited_host: str
    wrong_cert_host: str
    self_signed_host: str
    auth_socket: Path
    oauth_port: int = DEFAULT_OAUTH_PORT
    tls_hostname: str = TLS_HOSTNAME
    wrong_hostname: str = WRONG_HOSTNAME
    untrusted_source: str = UNTRUSTED_SOURCE

    @property
    def oauth_introspection_url(self) -> str:
        return f"http://{self.host}:{self.oauth_port}/introspect"


# --- paths -----------------------------------------------------------------------------------


def _dir() -> Path:
    return service_dir(NAME)


def _conf_path() -> Path:
    return _dir() / "dovecot.conf"


def _base_dir() -> Path:
    return _dir() / "run"


def _tls_dir() -> Path:
    return _dir() / "tls"


def _mail_root() -> Path:
    return _dir() / "mail"


def _oauth2_conf() -> Path:
    return _dir() / "oauth2.conf.ext"


def _maildir(user: str) -> Path:
    """A user's Maildir (``mail_location``: LAYOUT=fs, so a folder is a directory by name)."""
    return _mail_root() / user / "Maildir"


def _users_dir() -> Path:
    return _dir() / "users"


def _virtual_dir() -> Path:
    return _dir() / "virtual"


def _pidfile() -> Path:
    return _base_dir() / "master.pid"


def log_path() -> Path:
    """Where our Dovecot writes its log."""
    return log_dir() / "dovecot.log"


def endpoints() -> DovecotEndpoints:
    """The addresses, ports and CA file of our instance (whether or not it is running)."""
    return DovecotEndpoints(
        host=HOST,
        imap_port=env_port("INBOXSTREAM_IMAP_PORT", DEFAULT_IMAP_PORT),
        imaps_port=env_port("INBOXSTREAM_IMAPS_PORT", DEFAULT_IMAPS_PORT),
        lmtp_port=env_port("INBOXSTREAM_LMTP_PORT", DEFAULT_LMTP_PORT),
        ca_cert=_tls_dir() / "ca.pem",
        limited_host=LIMITED_HOST,
        wrong_cert_host=WRONG_CERT_HOST,
        self_signed_host=SELF_SIGNED_HOST,
        auth_socket=_base_dir() / "auth-client-smtp",
        oauth_port=env_port("INBOXSTREAM_OAUTH_PORT", DEFAULT_OAUTH_PORT),
    )


# --- install ---------------------------------------------------------------------------------


def installed() -> bool:
    return all(dpkg_installed(p) for p in PACKAGES) and shutil.which("dovecot") is not None


def install() -> bool:
    """Install the packages, the mail user and the TLS files; True if anything was missing."""
    changed = not installed()
    apt_install(PACKAGES)
    changed |= _ensure_mail_user()
    changed |= _ensure_tls()
    return changed


def _ensure_mail_user() -> bool:
    """Mail files belong to an unprivileged user: Dovecot refuses to access mail as root."""
    try:
        pwd.getpwnam(MAIL_USER)
        return False
    except KeyError:
        pass
    run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            MAIL_USER,
        ]
    )
    return True


def _mail_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError as exc:
        raise InfraError(f"user {MAIL_USER!r} is missing; run dovecot.install()") from exc
    return entry.pw_uid, entry.pw_gid


_LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = {san}
"""


def _ensure_tls() -> bool:
    """Create the CA, the localhost cert, a wrong-host cert and a self-signed cert, once.

    EC P-256 keys keep generation instant; the extensions satisfy strict X.509 checks
    (Python 3.13's VERIFY_X509_STRICT) so newer clients accept them too.
    """
    tls = _tls_dir()
    tls.mkdir(parents=True, exist_ok=True)
    names = ("ca", "server", "wrong", "selfsigned")
    if all((tls / f"{n}.pem").exists() and (tls / f"{n}.key").exists() for n in names):
        return False
    for n in names:
        for suffix in (".pem", ".key", ".csr", ".ext", ".srl"):
            (tls / f"{n}{suffix}").unlink(missing_ok=True)
    days = "3650"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        [
            "openssl",
            "req",
            "-x509",
            *newkey,
            "-days",
            days,
            "-sha256",
            "-keyout",
            str(tls / "ca.key"),
            "-out",
            str(tls / "ca.pem"),
            "-subj",
            "/O=inboxstream/CN=inboxstream test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )
    leaves = {
        "server": ("localhost", f"DNS:localhost,IP:{HOST},IP:{LIMITED_HOST}"),
        "wrong": (WRONG_HOSTNAME, f"DNS:{WRONG_HOSTNAME}"),
    }
    for n, (cn, san) in leaves.items():
        (tls / f"{n}.ext").write_text(_LEAF_EXT.format(san=san))
        run(
            [
                "openssl",
                "req",
                "-new",
                *newkey,
                "-keyout",
                str(tls / f"{n}.key"),
                "-out",
                str(tls / f"{n}.csr"),
                "-subj",
                f"/O=inboxstream/CN={cn}",
            ]
        )
        run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(tls / f"{n}.csr"),
                "-days",
                days,
                "-sha256",
                "-CA",
                str(tls / "ca.pem"),
                "-CAkey",
                str(tls / "ca.key"),
                "-CAcreateserial",
                "-extfile",
                str(tls / f"{n}.ext"),
                "-out",
                str(tls / f"{n}.pem"),
            ]
        )
    run(
        [
            "openssl",
            "req",
            "-x509",
            *newkey,
            "-days",
            days,
            "-sha256",
            "-keyout",
            str(tls / "selfsigned.key"),
            "-out",
            str(tls / "selfsigned.pem"),
            "-subj",
            "/O=inboxstream/CN=localhost",
            "-addext",
            f"subjectAltName=DNS:localhost,IP:{SELF_SIGNED_HOST}",
        ]
    )
    for path in tls.glob("*.key"):
        path.chmod(0o600)
    return True


# --- config ----------------------------------------------------------------------------------


def _render_config() -> str:
    ep = endpoints()
    uid, gid = _mail_ids()
    tls = _tls_dir()
    dh = Path("/usr/share/dovecot/dh.pem")
    values = {
        "base_dir": str(_base_dir()),
        "state_dir": str(_dir() / "state"),
        "log_path": str(log_path()),
        "host": ep.host,
        "limited_host": ep.limited_host,
        "wrong_cert_host": ep.wrong_cert_host,
        "self_signed_host": ep.self_signed_host,
        "server_cert": str(tls / "server.pem"),
        "server_key": str(tls / "server.key"),
        "wrong_cert": str(tls / "wrong.pem"),
        "wrong_key": str(tls / "wrong.key"),
        "self_signed_cert": str(tls / "selfsigned.pem"),
        "self_signed_key": str(tls / "selfsigned.key"),
        "ssl_dh_line": f"ssl_dh = <{dh}" if dh.exists() else "",
        "users_dir": str(_users_dir()),
        "mail_uid": str(uid),
        "mail_gid": str(gid),
        "mail_root": str(_mail_root()),
        "limited_capability": LIMITED_CAPABILITY,
        "imap_port": str(ep.imap_port),
        "imaps_port": str(ep.imaps_port),
        "lmtp_port": str(ep.lmtp_port),
        "auth_socket_name": ep.auth_socket.name,
        "virtual_dir": str(_virtual_dir()),
        "oauth2_conf": str(_oauth2_conf()),
    }
    text = _TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[a-z_]+@", text)
    if leftover:
        raise InfraError(f"{_TEMPLATE.name}: unfilled placeholders {sorted(set(leftover))}")
    return text


def _write_config() -> bool:
    """Write config and folders Dovecot needs; True if the config text changed."""
    uid, gid = _mail_ids()
    for path in (_base_dir(), _dir() / "state"):
        path.mkdir(parents=True, exist_ok=True)
    mail = _mail_root()
    mail.mkdir(parents=True, exist_ok=True)
    os.chown(mail, uid, gid)
    users = _users_dir()
    users.mkdir(parents=True, exist_ok=True)
    _fix_users_perms(users, 0o750)
    # The virtual \All folder's definition: every mailbox but the virtual ones, all messages.
    definition = _virtual_dir() / "All" / "dovecot-virtual"
    definition.parent.mkdir(parents=True, exist_ok=True)
    definition.write_text("*\n-Virtual/*\n  all\n")
    for path in (_virtual_dir(), definition.parent, definition):
        path.chmod(0o755 if path.is_dir() else 0o644)
    # RFC 7662 introspection: Dovecot POSTs token=<access token> and wants {"active": true,
    # "username": <the login name>} back; no cache, so a revoked token fails at once.
    _oauth2_conf().write_text(
        "introspection_mode = post\n"
        f"introspection_url = {endpoints().oauth_introspection_url}\n"
        "force_introspection = yes\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
    )
    _oauth2_conf().chmod(0o644)
    text = _render_config()
    conf = _conf_path()
    old = conf.read_text() if conf.exists() else None
    if old != text:
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(conf)
    return old != text


# Every IDLE-ing imap process holds one inotify instance, all under the one vmail uid. The
# kernel's default of 128 instances per uid means that past ~128 idle connections Dovecot
# falls back to polling the mailbox every mailbox_idle_check_interval (the config sets 1 s).
INOTIFY_INSTANCES = 8192
_INOTIFY_PATH = Path("/proc/sys/fs/inotify/max_user_instances")


def _raise_inotify_limit() -> None:
    """Best effort: raise the per-uid inotify instance limit when we may (root, writable)."""
    try:
        current = int(_INOTIFY_PATH.read_text())
        if current < INOTIFY_INSTANCES:
            _INOTIFY_PATH.write_text(f"{INOTIFY_INSTANCES}\n")
    except (OSError, ValueError) as exc:
        print(
            f"dovecot: could not raise {_INOTIFY_PATH} to {INOTIFY_INSTANCES} ({exc}); beyond "
            "~128 idle connections IDLE falls back to 1-second polling",
            file=sys.stderr,
        )


def _fix_users_perms(path: Path, mode: int) -> None:
    """The auth process runs as the dovecot user, so it must be able to read the files."""
    try:
        gid = pwd.getpwnam("dovecot").pw_gid
    except KeyError:
        return
    os.chown(path, 0, gid)
    path.chmod(mode)


# --- process control -------------------------------------------------------------------------


def _running_pid() -> int | None:
    pid = read_pid(_pidfile())
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        if b"dovecot" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # a recycled pid, not our master
    return pid


def start(timeout: float = 30) -> bool:
    """Start our Dovecot; False if it was already running (then it is left to its owner).

    The config is rewritten every time; if it changed under a running instance, that instance
    is restarted (waiting for the old master to exit) but still counts as "already running".
    """
    if not installed():
        raise InfraError("dovecot is not installed; run dovecot.install() first")
    _ensure_tls()
    changed = _write_config()
    pid = _running_pid()
    if pid is not None and not changed:
        return False
    if pid is not None:
        stop_pid(pid, timeout=timeout, what="old dovecot master")
    ep = endpoints()
    for port in (ep.imap_port, ep.imaps_port, ep.lmtp_port):
        if port_open(ep.host, port):
            raise InfraError(
                f"{ep.host}:{port} is already in use by another process; stop it or set "
                "INBOXSTREAM_IMAP_PORT / INBOXSTREAM_IMAPS_PORT / INBOXSTREAM_LMTP_PORT"
            )
    _raise_inotify_limit()
    # The penalty socket is disabled (mode 0), so the master never recreates it; a stale one
    # from an older config makes the auth process retry connecting to it for 5 seconds.
    (_base_dir() / "anvil-auth-penalty").unlink(missing_ok=True)
    # doveconf validates the whole file and names the bad line, which -F would only log.
    run(["doveconf", "-c", str(_conf_path()), "-n"], timeout=60)
    new_pid = spawn(["dovecot", "-F", "-c", str(_conf_path())], log=log_path())
    deadline = time.monotonic() + timeout
    try:
        for port in (ep.imap_port, ep.imaps_port, ep.lmtp_port):
            wait_for_port(
                ep.host, port, max(1.0, deadline - time.monotonic()), what="dovecot", log=log_path()
            )
        _wait_for_anvil(deadline)
    except InfraError:
        with contextlib.suppress(InfraError):
            stop_pid(new_pid, timeout=10, what="dovecot")
        raise InfraError(f"dovecot did not come up; last log lines:\n{_log_tail()}") from None
    return pid is None


def _wait_for_anvil(deadline: float) -> None:
    """doveadm who needs the anvil socket; it appears a moment after the listeners."""
    anvil = _base_dir() / "anvil"
    while not anvil.exists():
        if time.monotonic() > deadline:
            raise InfraError(f"{anvil} did not appear")
        time.sleep(0.05)


def _log_tail(lines: int = 30) -> str:
    try:
        return "\n".join(log_path().read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop() -> None:
    """Stop our Dovecot (master and children) and wait until it has exited."""
    pid = _running_pid()
    if pid is not None:
        stop_pid(pid, what="dovecot master")


def status() -> ServiceStatus:
    pid = _running_pid()
    ep = endpoints()
    return ServiceStatus(
        name=NAME,
        installed=installed(),
        running=pid is not None,
        pid=pid,
        endpoints={
            "imap+starttls": f"{ep.host}:{ep.imap_port}",
            "imaps": f"{ep.host}:{ep.imaps_port}",
            "lmtp": f"{ep.host}:{ep.lmtp_port}",
            "limited imap(s)": f"{ep.limited_host}:{ep.imap_port}/{ep.imaps_port}",
            "wrong-host cert imap(s)": f"{ep.wrong_cert_host}:{ep.imap_port}/{ep.imaps_port}",
            "self-signed imap(s)": f"{ep.self_signed_host}:{ep.imap_port}/{ep.imaps_port}",
            "ca": str(ep.ca_cert),
            "auth socket": str(ep.auth_socket),
        },
        detail=f"config {_conf_path()}, log {log_path()}",
    )


# --- users and mail --------------------------------------------------------------------------


def _write_user_file(name: str, line: str | None, *, wait: bool = True) -> None:
    """Create, replace (line) or delete (None) one user's passwd-file.

    Dovecot stats a passwd-file at most once per second and reloads it only if mtime (whole
    seconds) or size changed. A new file is always read fresh; for a replaced or deleted one we
    bump the mtime and (if ``wait``) sleep into the next second, so the change is visible when
    we return.
    """
    users = _users_dir()
    users.mkdir(parents=True, exist_ok=True)
    path = users / name
    try:
        old_mtime: int | None = path.stat().st_mtime_ns
    except FileNotFoundError:
        old_mtime = None
    if line is None:
        path.unlink(missing_ok=True)
    else:
        tmp = users / f".{name}.tmp"
        tmp.write_text(f"{line}\n")
        _fix_users_perms(tmp, 0o640)
        if old_mtime is not None:
            new_mtime = max(time.time_ns(), old_mtime + 1_000_000_000)
            os.utime(tmp, ns=(new_mtime, new_mtime))
        tmp.replace(path)
    if old_mtime is not None and wait:
        time.sleep(1.05 - time.time() % 1)


def _check_name(name: str) -> None:
    if not _USERNAME_RE.match(name):
        raise ValueError(f"invalid mail user name {name!r}")


def add_user(
    name: str,
    password: str,
    *,
    sent_folder: str = "Sent",
    special_use: bool = True,
    virtual_all: bool = False,
) -> None:
    """Create (or replace) a mail user; Dovecot sees the change on its next lookup.

    ``special_use=True``: INBOX plus Sent/Drafts/Trash/Junk/Archive flagged per RFC 6154, with
    the \\Sent folder named ``sent_folder`` (no whitespace: the name travels as a passwd-file
    extra field). ``special_use=False``: INBOX and ``sent_folder`` only, without any flags,
    like servers that predate SPECIAL-USE. ``virtual_all=True`` adds ``Virtual/All``, a
    virtual folder flagged ``\\All`` that shows every message again (like Gmail's All Mail).
    All of these work through userdb fields that switch namespaces or rename the configured
    Sent mailbox (see the template).
    """
    _check_name(name)
    if "\n" in password or "\r" in password:
        raise ValueError("password must be a single line")
    if not sent_folder or sent_folder.upper() == "INBOX":
        raise ValueError(f"invalid sent folder {sent_folder!r}")
    fields: list[str] = []
    if special_use:
        if re.search(r"\s|%", sent_folder):
            raise ValueError(
                f"sent folder {sent_folder!r}: a special-use folder name cannot contain "
                "whitespace or '%' (passwd-file fields); use special_use=False for such names"
            )
        if sent_folder != "Sent":
            fields += [
                f"namespace/{ns}/mailbox/Sent/name={sent_folder}" for ns in ("inbox", "limited")
            ]
    else:
        fields += [
            "namespace/inbox/disabled=yes",
            "namespace/plain/disabled=no",
            "namespace/limited/disabled=yes",
        ]
    if virtual_all:  # a Virtual/All folder (\All) showing every message once more
        fields.append("namespace/virtual/disabled=no")
    uid, gid = _mail_ids()
    secret = "{PLAIN.B64}" + base64.b64encode(password.encode()).decode()
    extra = " ".join(f"userdb_{f}" for f in fields)
    line = f"{name}:{secret}:{uid}:{gid}::{_mail_root() / name}::{extra}"
    _write_user_file(name, line)
    if not special_use and sent_folder not in doveadm("mailbox", "list", "-u", name).splitlines():
        doveadm("mailbox", "create", "-s", "-u", name, sent_folder)
    # Create every folder here and alone: Dovecot creates the ``auto`` folders on first
    # SELECT, and two fresh sessions of one user (inbox and sent connections) doing that at
    # the same moment take the list index and a mailbox index lock in opposite orders; the
    # kernel answers EDEADLK and the imap process panics (seen in test_live). A STATUS does
    # not create them (measured: no folder directory after it), a CREATE does.
    listed = [f for f in doveadm("mailbox", "list", "-u", name).splitlines() if f.strip()]
    missing = [f for f in listed if f.upper() != "INBOX" and not (_maildir(name) / f).exists()]
    if missing:
        doveadm("mailbox", "create", "-u", name, *missing, check=False)
    doveadm("mailbox", "status", "-u", name, "messages", "*")


def remove_user(name: str, *, wait: bool = False) -> None:
    """Delete a user, close their sessions and remove their mail.

    Without ``wait`` Dovecot may still accept the user for up to a second (it re-checks a
    passwd-file at most once per second); fine for teardown, pass ``wait=True`` when a test
    needs the login to fail right away.
    """
    _check_name(name)
    _write_user_file(name, None, wait=wait)
    kick(name)
    shutil.rmtree(_mail_root() / name, ignore_errors=True)


def kick(name: str) -> None:
    """Close every session of the user (clients reconnect and log in again)."""
    _check_name(name)
    if _running_pid() is not None:
        doveadm("kick", name, check=False)


def deliver(user: str, raw: bytes, *, sender: str = "sender@example.com") -> None:
    """Deliver one RFC 5322 message to ``user``'s INBOX through our LMTP listener."""
    ep = endpoints()
    try:
        with smtplib.LMTP(ep.host, ep.lmtp_port, timeout=30) as lmtp:
            lmtp.sendmail(sender, [user], raw)
    except (smtplib.SMTPException, OSError) as exc:
        raise InfraError(
            f"LMTP delivery to {user!r} via {ep.host}:{ep.lmtp_port} failed: {exc}"
        ) from exc


def doveadm(*args: str, check: bool = True) -> str:
    """Run doveadm against our instance (our config, hence our base_dir and sockets)."""
    return run(["doveadm", "-c", str(_conf_path()), *args], timeout=120, check=check).stdout


def who(user: str) -> int:
    """How many IMAP connections ``user`` has open right now (from anvil via doveadm who)."""
    return len(imap_sessions(user))


def imap_sessions(user: str) -> list[int]:
    """The pid of the imap process behind each IMAP connection anvil counts for ``user``."""
    out = doveadm("who", "-1", user)
    pids = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == user and fields[1] == "imap":
            pids.append(int(fields[2]))
    return pids


def fill_maildir(user: str, mails: Iterable[bytes], folder: str = "INBOX") -> int:
    """Write messages straight into ``user``'s Maildir, let Dovecot index them, and return the
    folder's message count.

    For the 10,000 to 100,000-message folders of tests and benchmarks: LMTP delivers a few
    hundred messages a second, this writes tens of thousands. The folder must exist (INBOX
    and the special-use folders always do). Messages are filed as seen.
    """
    _check_name(user)
    doveadm("mailbox", "status", "-u", user, "messages", folder)  # creates the Maildir
    root = _maildir(user)
    cur = (root if folder.upper() == "INBOX" else root / folder) / "cur"
    if not cur.is_dir():
        raise InfraError(f"{user}: folder {folder!r} has no Maildir at {cur.parent}")
    uid, gid = _mail_ids()
    stamp, pid = int(time.time()), os.getpid()
    for i, raw in enumerate(mails):
        path = cur / f"{stamp}.M{i}P{pid}.inboxstream,S={len(raw)}:2,S"
        path.write_bytes(raw)
        os.chown(path, uid, gid)
    doveadm("force-resync", "-u", user, folder)
    out = doveadm("mailbox", "status", "-u", user, "messages", folder)
    return int(out.split("=", 1)[1])

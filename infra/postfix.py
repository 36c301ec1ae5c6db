"""A local Postfix 3.x (SMTP submission) from Debian packages, with its own config directory.

Sending through a connected inbox needs a real submission server: STARTTLS and implicit TLS,
SMTP AUTH against the same users as IMAP, and delivery into the recipients' mailboxes. This
instance authenticates through Dovecot's auth socket (``smtpd_sasl_type = dovecot``) and
delivers our test domains to Dovecot over LMTP, so a sent message really lands in an INBOX.
It never reads /etc/postfix/main.cf and never uses systemd: ``postfix -c DIR start`` with
config, queue and data under ``service_dir("postfix")`` and its log in
``log_dir()/postfix.log`` (written by postlogd, no syslog needed).

Endpoints (loopback only): submission with STARTTLS on ``127.0.0.1:10587`` and implicit TLS
on ``127.0.0.1:10465``, certificate = Dovecot's server cert from our CA (valid for
``localhost`` and 127.0.0.1). No port 25 listener; mail to any other domain is refused.

Policy worth knowing when writing tests: a login may only send as itself
(``reject_sender_login_mismatch``, MAIL FROM stage), unknown mailboxes are refused at RCPT
(address verification asks Dovecot's LMTP; the first RCPT to a new address takes about a
second), messages over ``MESSAGE_SIZE_LIMIT`` are refused (SIZE at MAIL FROM, or 552 after
DATA), and executable attachments are refused after DATA (``mime_header_checks``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import smtplib
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from inboxstream.infra import dovecot
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
    stop_pid,
    wait_for_port,
)

NAME = "postfix"
PACKAGES = ("postfix",)
HOST = "127.0.0.1"
TLS_HOSTNAME = "localhost"
DEFAULT_SUBMISSION_PORT = 10587
DEFAULT_SMTPS_PORT = 10465
#: Mail for these domains is delivered to our Dovecot; every other domain is refused.
DOMAINS = ("inboxstream.test",)
#: Postfix's own default (10 MB in bytes); the SMTP client reads it from the EHLO SIZE keyword.
MESSAGE_SIZE_LIMIT = 10_240_000

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_PLACEHOLDER_RE = re.compile(r"@[a-z_]+@")

# Debian's postinst asks what kind of mail server to configure; "No configuration" leaves
# /etc/postfix/main.cf alone (we never use it) and keeps apt from prompting.
_DEBCONF = (
    "postfix postfix/main_mailer_type select No configuration\n"
    "postfix postfix/mailname string localhost\n"
)

# Executables inside mail are refused at end of DATA, a common real-world submission policy.
_MIME_HEADER_CHECKS = (
    r"/^Content-(Disposition|Type):.*name\s*=\s*\"?[^\"]*\.(exe|bat|cmd|com|pif|scr|vbs|js)\"?"
    r"\s*(;.*)?$/ REJECT executable attachments are not accepted"
    "\n"
)
# The SASL login is the mailbox address, and a login may send only as itself.
_SENDER_LOGIN_MAP = "/^(.+)$/ ${1}\n"


@dataclass(frozen=True)
class PostfixEndpoints:
    """Where to submit mail and what to trust.

    ``host`` serves STARTTLS on ``submission_port`` and implicit TLS on ``smtps_port`` with a
    certificate for ``tls_hostname`` (and the IP) signed by ``ca_cert``. Logins are the Dovecot
    users (``dovecot.add_user``); mail for ``domains`` is delivered into their mailboxes.
    """

    host: str
    submission_port: int
    smtps_port: int
    ca_cert: Path
    tls_hostname: str
    domains: tuple[str, ...]
    message_size_limit: int


# --- paths -----------------------------------------------------------------------------------


def _dir() -> Path:
    return service_dir(NAME)


def _conf_dir() -> Path:
    return _dir() / "etc"


def _queue_dir() -> Path:
    return _dir() / "queue"


def _data_dir() -> Path:
    return _dir() / "data"


def _pidfile() -> Path:
    return _queue_dir() / "pid" / "master.pid"


def _log() -> Path:
    return log_dir() / "postfix.log"


def endpoints() -> PostfixEndpoints:
    """The addresses, ports and CA of our instance (whether or not it is running)."""
    return PostfixEndpoints(
        host=HOST,
        submission_port=env_port("INBOXSTREAM_SUBMISSION_PORT", DEFAULT_SUBMISSION_PORT),
        smtps_port=env_port("INBOXSTREAM_SMTPS_PORT", DEFAULT_SMTPS_PORT),
        ca_cert=dovecot.endpoints().ca_cert,
        tls_hostname=TLS_HOSTNAME,
        domains=DOMAINS,
        message_size_limit=MESSAGE_SIZE_LIMIT,
    )


# --- install ---------------------------------------------------------------------------------


def installed() -> bool:
    return all(dpkg_installed(p) for p in PACKAGES) and shutil.which("postfix") is not None


def install() -> bool:
    """Install Postfix (and Dovecot, whose auth, LMTP and certificates it uses).

    True if anything was missing. Debconf is preseeded so the package never prompts.
    """
    changed = dovecot.install()
    if installed():
        return changed
    proc = subprocess.run(
        ["debconf-set-selections"], input=_DEBCONF, text=True, capture_output=True, timeout=60
    )
    if proc.returncode != 0:
        raise InfraError(f"debconf-set-selections failed: {proc.stderr[-500:]}")
    apt_install(PACKAGES)
    if not installed():
        raise InfraError("apt-get finished but the postfix command is still missing")
    return True


# --- config ----------------------------------------------------------------------------------


def _tls_files() -> tuple[Path, Path]:
    """Dovecot's server key and certificate (CA-signed for localhost and 127.0.0.1)."""
    tls = dovecot.endpoints().ca_cert.parent
    key, cert = tls / "server.key", tls / "server.pem"
    if not (key.exists() and cert.exists()):
        raise InfraError(f"{cert} is missing; run dovecot.install() first")
    return key, cert


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``@name@`` placeholders; an unfilled one is a bug in the template or the caller."""
    text = (_TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = _PLACEHOLDER_RE.findall(text)
    if leftover:
        raise InfraError(f"{template}: unfilled placeholders {sorted(set(leftover))}")
    return text


def _write_if_changed(path: Path, text: str) -> bool:
    old = path.read_text() if path.exists() else None
    if old == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def _write_config() -> bool:
    """Write main.cf, master.cf and the lookup tables; True if any of them changed."""
    ep = endpoints()
    dep = dovecot.endpoints()
    conf = _conf_dir()
    conf.mkdir(parents=True, exist_ok=True)
    # Postfix wants its queue root-owned (post-install creates the subfolders on start) and
    # its data directory owned by the mail owner.
    _queue_dir().mkdir(parents=True, exist_ok=True)
    data = _data_dir()
    data.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, "postfix", "postfix")
    key, cert = _tls_files()
    tables = {
        "sender_login_map.regexp": _SENDER_LOGIN_MAP,
        "mime_header_checks.regexp": _MIME_HEADER_CHECKS,
    }
    changed = False
    for name, text in tables.items():
        changed |= _write_if_changed(conf / name, text)
    values = {
        "queue_dir": str(_queue_dir()),
        "data_dir": str(data),
        "log_file": str(_log()),
        "log_dir": str(_log().parent),
        "hostname": TLS_HOSTNAME,
        "first_domain": ep.domains[0],
        "domains": ", ".join(ep.domains),
        "host": ep.host,
        "lmtp_host": dep.host,
        "lmtp_port": str(dep.lmtp_port),
        "message_size_limit": str(ep.message_size_limit),
        "tls_key": str(key),
        "tls_cert": str(cert),
        "auth_socket": str(dep.auth_socket),
        "sender_login_map": str(conf / "sender_login_map.regexp"),
        "mime_header_checks": str(conf / "mime_header_checks.regexp"),
        "submission_port": str(ep.submission_port),
        "smtps_port": str(ep.smtps_port),
    }
    changed |= _write_if_changed(conf / "main.cf", render("postfix-main.cf.in", values))
    changed |= _write_if_changed(conf / "master.cf", render("postfix-master.cf.in", values))
    return changed


# --- process control -------------------------------------------------------------------------


def _postfix(*args: str, timeout: float = 60, check: bool = True) -> str:
    proc = run(["postfix", "-c", str(_conf_dir()), *args], timeout=timeout, check=check)
    return proc.stdout + proc.stderr


def _running_pid() -> int | None:
    pid = read_pid(_pidfile())
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        if b"master" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # a recycled pid, not our master
    return pid


def start(timeout: float = 30) -> bool:
    """Start our Postfix; False if it was already running (then it is left to its owner).

    The config is rewritten every time; a running instance whose config changed is told to
    ``reload`` (master re-reads it without dropping the queue) and still counts as "already
    running". Dovecot must be running for AUTH and delivery, but not for Postfix to start.
    """
    if not installed():
        raise InfraError("postfix is not installed; run postfix.install() first")
    changed = _write_config()
    ep = endpoints()
    pid = _running_pid()
    if pid is not None:
        if changed:
            _postfix("reload")
        return False
    for port in (ep.submission_port, ep.smtps_port):
        if port_open(ep.host, port):
            raise InfraError(
                f"{ep.host}:{port} is already in use by another process; stop it or set "
                "INBOXSTREAM_SUBMISSION_PORT / INBOXSTREAM_SMTPS_PORT"
            )
    # `postfix check` validates the config and creates the queue folders with the right owners;
    # it names the bad line, which a failed start would only log.
    _postfix("check", timeout=120)
    _postfix("start", timeout=120)
    deadline = time.monotonic() + timeout
    try:
        for port in (ep.submission_port, ep.smtps_port):
            wait_for_port(
                ep.host, port, max(1.0, deadline - time.monotonic()), what="postfix", log=_log()
            )
        _wait_for_banner(ep, deadline)
    except InfraError:
        with contextlib.suppress(InfraError):
            stop()
        raise InfraError(f"postfix did not come up; last log lines:\n{_log_tail()}") from None
    return True


def _wait_for_banner(ep: PostfixEndpoints, deadline: float) -> None:
    """Healthy = the implicit-TLS listener completes a verified handshake and answers EHLO."""
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP_SSL(ep.host, ep.smtps_port, context=ctx, timeout=5) as smtp:
                code, _ = smtp.ehlo("healthcheck.inboxstream.test")
                if code == 250 and smtp.has_extn("auth"):
                    return
        except (OSError, smtplib.SMTPException) as exc:
            last = exc
        time.sleep(0.2)
    raise InfraError(f"postfix accepted connections but never answered EHLO: {last}")


def _log_tail(lines: int = 30) -> str:
    try:
        return "\n".join(_log().read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop() -> None:
    """Stop our Postfix (master and children) and wait until the master has exited."""
    pid = _running_pid()
    if pid is None:
        return
    # `postfix stop` lets master finish in-flight deliveries; stop_pid waits (or kills).
    with contextlib.suppress(InfraError):
        _postfix("stop", check=False)
    stop_pid(pid, what="postfix master")


def status() -> ServiceStatus:
    pid = _running_pid()
    ep = endpoints()
    auth = dovecot.endpoints().auth_socket
    return ServiceStatus(
        name=NAME,
        installed=installed(),
        running=pid is not None,
        pid=pid,
        endpoints={
            "submission+starttls": f"{ep.host}:{ep.submission_port}",
            "submissions (implicit tls)": f"{ep.host}:{ep.smtps_port}",
            "domains": ",".join(ep.domains),
            "ca": str(ep.ca_cert),
        },
        detail=(
            f"config {_conf_dir()}, log {_log()}, "
            f"dovecot auth socket {'present' if auth.exists() else 'MISSING'}"
        ),
    )


def queue_size() -> int:
    """Messages in our queue (deferred or active): a non-zero value after a test is a smell."""
    out = run(["postqueue", "-c", str(_conf_dir()), "-j"], timeout=60, check=False).stdout.strip()
    return len([line for line in out.splitlines() if line.strip()])

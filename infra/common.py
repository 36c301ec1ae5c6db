"""Shared plumbing for the local services: one state folder, process control, health waits.

Every service keeps its binaries, data, config and logs under ``state_dir()`` (default
``<repo>/.inboxstream``, override with ``INBOXSTREAM_HOME``) so a fresh clone is self-contained
and ``rm -rf .inboxstream`` is a full reset. Nothing here uses systemd or Docker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inboxstream.core.lifetime import pid_alive
from inboxstream.core.paths import state_dir
from inboxstream.errors import InboxstreamError


class InfraError(InboxstreamError):
    """A service could not be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    """What ``inboxstream infra status`` prints for one service."""

    name: str
    installed: bool
    running: bool
    pid: int | None
    endpoints: dict[str, str]
    detail: str = ""


def service_dir(name: str) -> Path:
    path = state_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    """All service logs live in one folder so a failed CI run can print them."""
    path = state_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure raise InfraError with its stderr tail."""
    proc = subprocess.run(
        list(cmd), env=env, timeout=timeout, cwd=cwd, text=True, capture_output=True
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise InfraError(f"{' '.join(cmd[:3])}... exited {proc.returncode}: {tail}")
    return proc


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages that are missing, without letting their scripts start daemons.

    A policy-rc.d that returns 101 stops maintainer scripts from starting services: we start
    our own instances with our own config, never the distribution's.
    """
    missing = [p for p in packages if not dpkg_installed(p)]
    if not missing:
        return
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        update_stamp = Path("/var/lib/apt/lists/lock")
        lists = list(Path("/var/lib/apt/lists").glob("*Packages*"))
        if not lists or not update_stamp.exists():
            run(["apt-get", "update", "-q"], env=env, timeout=900)
        try:
            run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                env=env,
                timeout=1200,
            )
        except InfraError:
            # A stale package list is the usual cause; refresh once and try again.
            run(["apt-get", "update", "-q"], env=env, timeout=900)
            run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                env=env,
                timeout=1200,
            )
    finally:
        if created:
            policy.unlink(missing_ok=True)


def dpkg_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def env_port(env: str, default: int) -> int:
    """A port from an environment variable (so two checkouts can run side by side)."""
    value = os.environ.get(env)
    if not value:
        return default
    try:
        port = int(value)
    except ValueError as exc:
        raise InfraError(f"{env}={value!r} is not a port number") from exc
    if not 0 < port < 65536:
        raise InfraError(f"{env}={value!r} is not a port number (1-65535)")
    return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_for_port(
    host: str, port: int, timeout: float, *, what: str, log: Path | None = None
) -> None:
    """Block until something accepts on host:port; raise InfraError naming the log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    hint = f"; see {log}" if log else ""
    raise InfraError(f"{what} did not open {host}:{port} within {timeout:.0f}s{hint}")


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_pid(pid: int, *, timeout: float = 30, what: str = "process") -> None:
    """SIGTERM, wait for the process to exit, then SIGKILL: a restart must not race the old one."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    raise InfraError(f"{what} (pid {pid}) did not exit after SIGKILL")


def spawn(
    cmd: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start a long-running daemon detached from our process group, output appended to log.

    start_new_session keeps it alive past the CLI that started it, and keeps a Ctrl-C in the
    terminal from reaching it; stop() is the way to end it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid

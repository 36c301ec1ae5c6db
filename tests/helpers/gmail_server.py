"""A Gmail-like IMAP server for tests: labels are folders, one message shows up in several.

Dovecot has no X-GM-EXT-1, so the label tests run against Hoodiecrow (npm
``hoodiecrow-imap``, a scriptable IMAP4rev1 server for client tests) with its X-GM-EXT-1
plugin: ``X-GM-MSGID`` and ``X-GM-LABELS`` in FETCH, special-use flags in LIST. Installed with
npm into the state folder on first use; served over TLS with the Dovecot test CA's certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from inboxstream.core.paths import state_dir
from inboxstream.infra import dovecot
from tests.helpers.net import free_port

VERSION = "2.1.0"
SCRIPT = Path(__file__).with_name("gmail_server.js")


def _install() -> Path:
    root = state_dir() / "hoodiecrow"
    if not (root / "node_modules" / "hoodiecrow-imap" / "package.json").exists():
        if shutil.which("npm") is None:
            raise RuntimeError("the Gmail label tests need Node.js and npm")
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(root),
                f"hoodiecrow-imap@{VERSION}",
            ],
            check=True,
            timeout=600,
        )
    return root


class GmailServer:
    """One server with one mailbox (``storage`` in Hoodiecrow's format), until ``stop``."""

    def __init__(self, workdir: Path, user: str, password: str, storage: dict[str, Any]) -> None:
        root = _install()
        self.port = free_port()
        config = workdir / "gmail-storage.json"
        config.write_text(json.dumps({"users": {user: {"password": password}}, "storage": storage}))
        tls = dovecot.endpoints().ca_cert.parent
        self.log = workdir / "gmail-server.log"
        self.proc = subprocess.Popen(
            [
                "node",
                str(SCRIPT),
                str(self.port),
                str(config),
                str(tls / "server.pem"),
                str(tls / "server.key"),
            ],
            cwd=root,
            env={**os.environ, "NODE_PATH": str(root / "node_modules")},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while "listening" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Gmail-like server did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def gmail_message(raw: str, msgid: str, labels: list[str], date: str) -> dict[str, Any]:
    """One stored copy; every copy of a message has the same X-GM-MSGID and labels."""
    return {"raw": raw, "X-GM-MSGID": msgid, "X-GM-LABELS": labels, "internaldate": date}

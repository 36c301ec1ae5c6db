"""The inbox registry: which inboxes this producer host syncs, changeable at run time.

One JSON file per inbox in a directory (default ``<state>/inboxes``), written by
``inboxstream inbox add`` and read by the running service every few seconds, so inboxes are
added, changed and removed without a restart. A file, not a Kafka topic, because the record
holds the IMAP password: it stays on the producer host (directory 0700, files 0600) instead
of being copied into a topic every consumer could read. A changed file (say, a new password
after an auth failure) restarts that inbox; nothing else is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from inboxstream.core.settings import InboxSettings, describe_validation_error

log = logging.getLogger(__name__)


def inbox_fingerprint(inbox: InboxSettings) -> str:
    """Changes whenever any setting, the password included, changes. Never printed."""
    return hashlib.sha256(json.dumps(_with_password(inbox), sort_keys=True).encode()).hexdigest()


def _with_password(inbox: InboxSettings) -> dict[str, object]:
    """Every setting as JSON data, the password in clear (for the 0600 file and fingerprint)."""
    data = inbox.model_dump(mode="json")
    data["password"] = inbox.password.get_secret_value()
    return data


@dataclass
class InboxRegistry:
    directory: Path
    #: Files that could not be read at the last ``load`` (name -> reason), for ``inbox list``.
    errors: dict[str, str] = field(default_factory=dict)

    def _path(self, inbox_id: str) -> Path:
        # Inbox ids are validated by InboxSettings ([A-Za-z0-9._@+-]), so they are safe names.
        return self.directory / f"{inbox_id}.json"

    def add(self, inbox: InboxSettings) -> bool:
        """Create or replace; True if it was new. Written atomically, mode 0600."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        data = _with_password(inbox)
        path = self._path(inbox.id)
        existed = path.exists()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(data, fh, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return not existed

    def remove(self, inbox_id: str) -> bool:
        path = self._path(inbox_id)
        if not path.exists():
            return False
        path.unlink()
        return True

    def load(self) -> dict[str, InboxSettings]:
        """Every readable inbox by id; a broken file is logged and skipped, never fatal."""
        self.errors = {}
        inboxes: dict[str, InboxSettings] = {}
        if not self.directory.is_dir():
            return inboxes
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                inbox = InboxSettings.model_validate_json(path.read_bytes())
            except ValidationError as exc:
                self.errors[path.name] = describe_validation_error(exc)
            except OSError as exc:
                self.errors[path.name] = str(exc)
            else:
                inboxes[inbox.id] = inbox
        for name, reason in self.errors.items():
            log.warning("inbox registry: skipping %s: %s", name, reason)
        return inboxes

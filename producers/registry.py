"""The inbox registry: which inboxes this producer host syncs, changeable at run time.

One JSON file per inbox in a directory (default ``<state>/inboxes``), written by
``inboxstream inbox add`` and read by the running service every few seconds, so inboxes are
added, changed and removed without a restart. A file, not a Kafka topic, because the record
holds the IMAP password: it stays on the producer host (directory 0700, files 0600) instead
of being copied into a topic every consumer could read. A changed file (say, a new password
after an auth failure) restarts that inbox; nothing else is touched.

The password is stored encrypted (``password_encrypted``, a Fernet token; core/vault.py).
A file from before, with the password in clear, is rewritten encrypted the first time it is
loaded.
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

from inboxstream.core.settings import InboxSettings, Settings, describe_validation_error
from inboxstream.core.vault import SecretBox, SecretKeyError

log = logging.getLogger(__name__)


def registry_for(settings: Settings) -> InboxRegistry:
    """The registry the settings name, with their key source."""
    return InboxRegistry(
        settings.producer.registry_dir, SecretBox.default(settings.producer.secret_key_file)
    )


def inbox_fingerprint(inbox: InboxSettings) -> str:
    """Changes whenever any setting, the password included, changes. Never printed."""
    return hashlib.sha256(json.dumps(_with_password(inbox), sort_keys=True).encode()).hexdigest()


def _with_password(inbox: InboxSettings) -> dict[str, object]:
    """Every setting as JSON data, the password in clear (for the fingerprint only)."""
    data = inbox.model_dump(mode="json")
    data["password"] = inbox.password.get_secret_value()
    return data


ENCRYPTED = "password_encrypted"


def to_document(inbox: InboxSettings, box: SecretBox) -> dict[str, object]:
    """The stored form of an inbox (a registry file, a registry topic record): every setting,
    the password only as a Fernet token."""
    data: dict[str, object] = inbox.model_dump(mode="json", exclude={"password"})
    data[ENCRYPTED] = box.encrypt(inbox.password.get_secret_value())
    return data


def from_document(data: object, box: SecretBox) -> tuple[InboxSettings, bool]:
    """The inbox of a stored document, and whether its password was stored in clear.
    Raises ``ValueError``, ``ValidationError`` or ``SecretKeyError``."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    clear = ENCRYPTED not in data
    if not clear:
        token = data.pop(ENCRYPTED)
        if not isinstance(token, str):
            raise ValueError(f"{ENCRYPTED} is not a string")
        data["password"] = box.decrypt(token)
    return InboxSettings.model_validate(data), clear


@dataclass
class InboxRegistry:
    directory: Path
    #: Where the key comes from (core/vault.py); by default the environment or the key file.
    box: SecretBox = field(default_factory=SecretBox.default)
    #: Files that could not be read at the last ``load`` (name -> reason), for ``inbox list``.
    errors: dict[str, str] = field(default_factory=dict)

    def _path(self, inbox_id: str) -> Path:
        # Inbox ids are validated by InboxSettings ([A-Za-z0-9._@+-]), so they are safe names.
        return self.directory / f"{inbox_id}.json"

    def add(self, inbox: InboxSettings) -> bool:
        """Create or replace; True if it was new. Written atomically, mode 0600."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        data = to_document(inbox, self.box)
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

    def _read(self, path: Path) -> tuple[InboxSettings, bool]:
        """The inbox of one file, and whether its password was stored in clear."""
        return from_document(json.loads(path.read_bytes()), self.box)

    def _migrate(self, path: Path, inbox: InboxSettings) -> None:
        """A clear-text file from before encryption at rest: rewrite it encrypted."""
        try:
            self.add(inbox)
        except (OSError, SecretKeyError) as exc:
            log.error("inbox registry: could not encrypt %s: %s", path.name, exc)
            return
        log.warning("inbox registry: %s stored its password in clear; now encrypted", path.name)

    def rekey(self) -> int:
        """Re-encrypt every stored secret under the first key; the number of files rewritten.
        Files that do not decrypt are left as they are (and reported by ``load``)."""
        done = 0
        for inbox in self.load().values():
            self.add(inbox)
            done += 1
        return done

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
                inbox, clear = self._read(path)
            except ValidationError as exc:
                self.errors[path.name] = describe_validation_error(exc)
            except (OSError, ValueError, SecretKeyError) as exc:
                self.errors[path.name] = str(exc)
            else:
                inboxes[inbox.id] = inbox
                if clear:
                    self._migrate(path, inbox)
        for name, reason in self.errors.items():
            log.warning("inbox registry: skipping %s: %s", name, reason)
        return inboxes

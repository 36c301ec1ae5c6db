"""The inbox registry: which inboxes this producer host syncs, changeable at run time.

One JSON file per inbox in a directory (default ``<state>/inboxes``), written by
``inboxstream inbox add`` and read by the running service every few seconds, so inboxes are
added, changed and removed without a restart. A file, not a Kafka topic, because the record
holds the IMAP password: it stays on the producer host (directory 0700, files 0600) instead
of being copied into a topic every consumer could read. A changed file (say, a new password
after an auth failure) restarts that inbox; nothing else is touched.

The password is stored encrypted (``password_encrypted``, a Fernet token; core/vault.py), and
so are an OAuth2 inbox's refresh token and client secret (``oauth.*_encrypted``).
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

from pydantic import SecretStr, ValidationError

from inboxstream.core.settings import InboxSettings, Settings, describe_validation_error
from inboxstream.core.vault import SecretBox, SecretKeyError

log = logging.getLogger(__name__)


def registry_for(settings: Settings) -> InboxRegistry:
    """The registry the settings name, with their key source."""
    return InboxRegistry(
        settings.producer.registry_dir, SecretBox.default(settings.producer.secret_key_file)
    )


def inbox_fingerprint(inbox: InboxSettings) -> str:
    """Changes whenever any setting, the password and client secret included, changes. Never
    printed. The OAuth2 refresh token is left out: the token endpoint rotates it and it is
    stored back, which must not restart the inbox; a refresh token a person registers anew
    reaches the running inbox through ``TokenSource.offer`` instead."""
    data = inbox.model_dump(mode="json")
    data["password"] = inbox.password.get_secret_value()
    if inbox.oauth is not None:
        data["oauth"] = dict(data["oauth"], refresh_token=None)
        if inbox.oauth.client_secret is not None:
            data["oauth"]["client_secret"] = inbox.oauth.client_secret.get_secret_value()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


ENCRYPTED = "password_encrypted"
#: The OAuth2 secrets, stored the same way under ``oauth``.
OAUTH_SECRETS = ("refresh_token", "client_secret")


def to_document(inbox: InboxSettings, box: SecretBox) -> dict[str, object]:
    """The stored form of an inbox (a registry file, a registry topic record): every setting,
    the password and the OAuth2 secrets only as Fernet tokens (``<name>_encrypted``)."""
    data: dict[str, object] = inbox.model_dump(mode="json", exclude={"password"})
    data[ENCRYPTED] = box.encrypt(inbox.password.get_secret_value())
    if inbox.oauth is not None:
        oauth: dict[str, object] = inbox.oauth.model_dump(mode="json", exclude=set(OAUTH_SECRETS))
        for name in OAUTH_SECRETS:
            secret = getattr(inbox.oauth, name)
            if secret is not None:
                oauth[f"{name}_encrypted"] = box.encrypt(secret.get_secret_value())
        data["oauth"] = oauth
    return data


def from_document(data: object, box: SecretBox) -> tuple[InboxSettings, bool]:
    """The inbox of a stored document, and whether a secret in it was stored in clear.
    Raises ``ValueError``, ``ValidationError`` or ``SecretKeyError``."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    clear = ENCRYPTED not in data
    if not clear:
        data["password"] = box.decrypt(_token(data, ENCRYPTED))
    oauth = data.get("oauth")
    if isinstance(oauth, dict):
        for name in OAUTH_SECRETS:
            if name in oauth:
                clear = True
            elif f"{name}_encrypted" in oauth:
                oauth[name] = box.decrypt(_token(oauth, f"{name}_encrypted"))
    return InboxSettings.model_validate(data), clear


def _token(data: dict[str, object], key: str) -> str:
    token = data.pop(key)
    if not isinstance(token, str):
        raise ValueError(f"{key} is not a string")
    return token


def with_refresh_token(inbox: InboxSettings, refresh_token: str) -> InboxSettings:
    """The inbox with another OAuth2 refresh token (a rotated one, or a new sign-in)."""
    if inbox.oauth is None:
        raise ValueError(f"inbox {inbox.id!r} does not sign in with OAuth2")
    oauth = inbox.oauth.model_copy(update={"refresh_token": SecretStr(refresh_token)})
    return inbox.model_copy(update={"oauth": oauth})


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

    def store_refresh_token(self, inbox_id: str, refresh_token: str) -> None:
        """Store a rotated OAuth2 refresh token back into the inbox's file (encrypted)."""
        inbox, _ = self._read(self._path(inbox_id))
        self.add(with_refresh_token(inbox, refresh_token))

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

"""Inbox secrets encrypted at rest, with ``cryptography``'s Fernet (AES-128-CBC + HMAC-SHA256,
authenticated, timestamped tokens): no home-made crypto.

The key comes from, in this order:

* ``INBOXSTREAM_SECRET_KEY``: one or more Fernet keys, comma-separated, newest first (what a
  secret store or a Kubernetes secret injects);
* the key file (setting ``producer.secret_key_file``, default ``<state>/secret.key``, mode
  0600): one key per line, newest first; created with a fresh key the first time a secret is
  written and there is none.

Decryption tries every key (``MultiFernet``), encryption uses the first, so a key rotation is:
put the new key first, re-encrypt (``inboxstream inbox rekey``), drop the old key. Messages
and exceptions never carry a secret or a key.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from inboxstream.core.paths import state_dir
from inboxstream.errors import InboxstreamError

KEY_ENV = "INBOXSTREAM_SECRET_KEY"
KEY_FILE_NAME = "secret.key"


class SecretKeyError(InboxstreamError):
    """No key, a malformed key, or a secret that none of the keys decrypts."""


def default_key_file() -> Path:
    return state_dir() / KEY_FILE_NAME


def _parse_keys(text: str, where: str) -> list[Fernet]:
    keys = [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]
    try:
        return [Fernet(k.encode()) for k in keys]
    except (ValueError, TypeError):
        raise SecretKeyError(
            f"{where} holds something that is not a Fernet key (32 url-safe base64 bytes)"
        ) from None


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Atomically, mode 0600 from the first byte (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".key")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(b"\n".join(keys) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class SecretBox:
    """Encrypts and decrypts inbox secrets; see the module doc for where keys come from."""

    key_file: Path
    from_env: bool = False
    _keys: list[Fernet] | None = None

    @classmethod
    def default(cls, key_file: Path | None = None) -> SecretBox:
        return cls(key_file or default_key_file(), from_env=bool(os.environ.get(KEY_ENV)))

    def _load(self, create: bool) -> list[Fernet]:
        if self._keys is not None:
            return self._keys
        env = os.environ.get(KEY_ENV)
        if env:
            self._keys = _parse_keys(env, KEY_ENV)
        elif self.key_file.exists():
            self._keys = _parse_keys(self.key_file.read_text(), str(self.key_file))
        elif create:
            write_key_file(self.key_file, [Fernet.generate_key()])
            self._keys = _parse_keys(self.key_file.read_text(), str(self.key_file))
        else:
            raise SecretKeyError(
                f"no key to decrypt inbox secrets: set {KEY_ENV} or restore {self.key_file}"
            )
        if not self._keys:
            raise SecretKeyError(f"no key in {KEY_ENV if env else self.key_file}")
        return self._keys

    def encrypt(self, secret: str) -> str:
        return self._load(create=True)[0].encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return MultiFernet(self._load(create=False)).decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret does not decrypt with the configured key(s) (wrong key, or "
                "the file was changed)"
            ) from None

    def add_new_key(self) -> None:
        """Put a fresh key first in the key file (the old ones stay, for decryption)."""
        if self.from_env or os.environ.get(KEY_ENV):
            raise SecretKeyError(
                f"the key comes from {KEY_ENV}: put the new key first there ('new,old') and run "
                "rekey without --new-key"
            )
        self._load(create=True)
        old = self.key_file.read_bytes().split()
        write_key_file(self.key_file, [Fernet.generate_key(), *old])
        self._keys = None

    def drop_old_keys(self) -> None:
        """Keep only the first key in the key file (after everything is re-encrypted)."""
        if self.from_env or os.environ.get(KEY_ENV) or not self.key_file.exists():
            return
        keys = self.key_file.read_bytes().split()
        write_key_file(self.key_file, keys[:1])
        self._keys = None

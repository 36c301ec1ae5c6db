"""OAuth2 sign-in for IMAP and SMTP: access tokens from a refresh token, and the SASL strings.

Microsoft 365 and Google Workspace take OAuth2 where they once took passwords. An inbox with
``auth = "xoauth2"`` or ``"oauthbearer"`` holds a refresh token (encrypted at rest like a
password); ``TokenSource`` trades it for an access token at the provider's token endpoint
(the refresh-token grant, RFC 6749 section 6) and keeps that token until shortly before it
expires. All connections of one inbox share one source, so a reconnect storm costs one token
request, not one per connection.

* Refreshed ``EARLY_S`` before the expiry the endpoint announced, and at once when a server
  rejects the token (revoked, or expired early): the caller passes the token it was refused.
* A refresh token the endpoint rotates is handed to ``on_rotate`` (the registry stores it back,
  encrypted); the old one is never offered again by this source.
* The endpoint refusing the grant (``invalid_grant``: the refresh token expired or was
  revoked; ``invalid_client``) is ``TokenRejectedError``, not retriable: the inbox shows
  ``disconnected`` with the reason until a new refresh token is registered. An endpoint that
  cannot be reached or answers 5xx is retriable.

Tokens, refresh tokens and client secrets never appear in a message, a log line or an event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx

from inboxstream.core.settings import InboxSettings, OAuthSettings
from inboxstream.errors import InboxstreamError

log = logging.getLogger(__name__)

#: Refresh this long before the announced expiry, so a token never expires mid-login.
EARLY_S = 60.0
#: When the endpoint names no lifetime (``expires_in`` is optional in RFC 6749).
DEFAULT_LIFETIME_S = 3600.0
TOKEN_TIMEOUT_S = 20.0

Mechanism = Literal["xoauth2", "oauthbearer"]


class OAuthError(InboxstreamError):
    """Getting an access token failed."""

    kind = "oauth"
    retriable = True


class TokenRejectedError(OAuthError):
    """The token endpoint refused the refresh token or the client: a person must sign in again."""

    kind = "oauth_rejected"
    retriable = False


@dataclass
class TokenSource:
    """Access tokens for one inbox. Safe to share between that inbox's connections."""

    inbox_id: str
    settings: OAuthSettings
    #: Called with a rotated refresh token, to store it back (encrypted) where it came from.
    on_rotate: Callable[[str], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.monotonic
    _refresh_token: str = field(init=False)
    _access: str | None = field(default=None, init=False)
    _expires_at: float = field(default=0.0, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    # Refresh tokens this source replaced: offered again (a registry read from before the
    # rotation landed), they are ignored, never adopted.
    _retired: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._refresh_token = self.settings.refresh_token.get_secret_value()

    @property
    def refresh_token(self) -> str:
        return self._refresh_token

    def offer(self, refresh_token: str) -> bool:
        """A refresh token from the registry: adopt it when it is new to this source (a person
        signed in again); True if adopted. Ours, or one we rotated away from, changes nothing."""
        if refresh_token == self._refresh_token or refresh_token in self._retired:
            return False
        self._retired.add(self._refresh_token)
        self._refresh_token = refresh_token
        self._access = None
        return True

    async def token(self, *, rejected: str | None = None) -> str:
        """A valid access token. ``rejected``: the token a server just refused; a new one is
        fetched unless another connection already replaced it."""
        async with self._lock:
            now = self.clock()
            if self._access is not None and self._access != rejected:
                if now < self._expires_at - EARLY_S:
                    return self._access
            return await self._refresh()

    async def _refresh(self) -> str:
        data = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
            "client_id": self.settings.client_id,
        }
        if self.settings.client_secret is not None:
            data["client_secret"] = self.settings.client_secret.get_secret_value()
        if self.settings.scope:
            data["scope"] = self.settings.scope
        where = _where(self.settings.token_url)
        try:
            # A client per refresh: refreshes come once an hour per inbox, not per request.
            async with httpx.AsyncClient(timeout=TOKEN_TIMEOUT_S) as client:
                response = await client.post(
                    self.settings.token_url, data=data, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise OAuthError(
                f"token endpoint {where} could not be reached: {type(exc).__name__}"
            ) from None
        body = _json(response)
        if response.status_code >= 500:
            raise OAuthError(f"token endpoint {where} answered {response.status_code}")
        if response.status_code != 200 or "access_token" not in body:
            error = _safe(body.get("error")) or f"HTTP {response.status_code}"
            detail = _safe(body.get("error_description"))
            raise TokenRejectedError(
                f"token endpoint {where} refused the refresh token for {self.inbox_id!r}: "
                f"{error}{': ' + detail if detail else ''}. Sign the inbox in again "
                "(inboxstream inbox add ... with a new refresh token)"
            )
        token_type = str(body.get("token_type", "bearer")).lower()
        if token_type != "bearer":
            raise TokenRejectedError(
                f"token endpoint {where} issued a {_safe(token_type)!r} token; IMAP and SMTP "
                "take bearer tokens only"
            )
        access = body["access_token"]
        if not isinstance(access, str) or not access:
            raise OAuthError(f"token endpoint {where} answered without a usable access_token")
        lifetime = body.get("expires_in", DEFAULT_LIFETIME_S)
        try:
            seconds = float(lifetime)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = DEFAULT_LIFETIME_S
        self._access = access
        self._expires_at = self.clock() + max(seconds, 0.0)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._retired.add(self._refresh_token)
            self._refresh_token = rotated
            log.info(
                "%s: the token endpoint rotated the refresh token; storing the new one",
                self.inbox_id,
                extra={"inbox": self.inbox_id},
            )
            if self.on_rotate is not None:
                try:
                    await self.on_rotate(rotated)
                except Exception as exc:  # noqa: BLE001 - the new token stays in use in memory
                    log.error(
                        "%s: could not store the rotated refresh token (%s); it is kept in "
                        "memory, but a restart will need a new sign-in",
                        self.inbox_id,
                        type(exc).__name__,
                        extra={"inbox": self.inbox_id},
                    )
        return access


def _where(url: str) -> str:
    """The endpoint without any userinfo or query (which may hold credentials)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _safe(value: object) -> str:
    """A server-supplied word for a message: printable, short."""
    if value is None:
        return ""
    text = "".join(ch for ch in str(value) if ch.isprintable())
    return text[:200]


# --- SASL ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthLogin:
    """How a connection signs in with OAuth2: the mechanism and the inbox's token source."""

    mechanism: Mechanism
    source: TokenSource


#: What a connection signs in with: a password (LOGIN / AUTH PLAIN) or OAuth2.
Credentials = str | OAuthLogin


def credentials_for(inbox: InboxSettings, source: TokenSource | None) -> Credentials:
    """The inbox's password, or its OAuth2 login through ``source`` (required then)."""
    if inbox.auth == "password":
        return inbox.password.get_secret_value()
    if source is None:
        raise ValueError(f"inbox {inbox.id!r} signs in with OAuth2 but has no token source")
    return OAuthLogin(inbox.auth, source)


@dataclass
class TokenSources:
    """One ``TokenSource`` per OAuth2 inbox of a process, kept across reconnects and restarts
    of the inbox, so a rotated refresh token is never traded for the stale stored one.

    ``on_rotate(inbox_id, refresh_token)`` stores a rotated token back (producers/token_store.py).
    """

    on_rotate: Callable[[str, str], Awaitable[None]] | None = None
    _sources: dict[str, TokenSource] = field(default_factory=dict, init=False)

    def source(self, inbox: InboxSettings) -> TokenSource | None:
        """The inbox's source (None for a password inbox); a registry record with a refresh
        token new to it is adopted (``TokenSource.offer``)."""
        if inbox.oauth is None:
            self._sources.pop(inbox.id, None)
            return None
        source = self._sources.get(inbox.id)
        endpoint = inbox.oauth.model_dump(exclude={"refresh_token"})
        if source is None or source.settings.model_dump(exclude={"refresh_token"}) != endpoint:
            source = self._sources[inbox.id] = TokenSource(
                inbox.id, inbox.oauth, on_rotate=self._rotated(inbox.id)
            )
        else:
            source.offer(inbox.oauth.refresh_token.get_secret_value())
        return source

    def offer(self, inbox: InboxSettings) -> bool:
        """True when the inbox's record brings a refresh token its source had never seen (a
        person signed in again): an inbox stopped by a refused token should start again."""
        source = self._sources.get(inbox.id)
        if inbox.oauth is None or source is None:
            return False
        return source.offer(inbox.oauth.refresh_token.get_secret_value())

    def credentials(self, inbox: InboxSettings) -> Credentials:
        return credentials_for(inbox, self.source(inbox))

    def forget(self, inbox_id: str) -> None:
        self._sources.pop(inbox_id, None)

    def _rotated(self, inbox_id: str) -> Callable[[str], Awaitable[None]] | None:
        store = self.on_rotate
        if store is None:
            return None

        async def rotated(refresh_token: str) -> None:
            await store(inbox_id, refresh_token)

        return rotated


def initial_response(mechanism: Mechanism, user: str, token: str, host: str, port: int) -> str:
    """The base64 client response that carries the bearer token.

    XOAUTH2 (Google's and Microsoft's documentation): ``user=U^Aauth=Bearer T^A^A``.
    OAUTHBEARER (RFC 7628 section 3.1): a GS2 header naming the user, then host, port and
    auth key/value pairs separated by ^A."""
    if mechanism == "xoauth2":
        raw = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        # RFC 5801 saslname: "," and "=" are escaped in the authorization identity.
        name = user.replace("=", "=3D").replace(",", "=2C")
        raw = f"n,a={name},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode()).decode("ascii")


def abort_response(mechanism: Mechanism) -> str:
    """The client's answer to an error challenge, which ends the exchange with a failure:
    empty for XOAUTH2, a single ^A for OAUTHBEARER (RFC 7628 section 3.2.3)."""
    return "" if mechanism == "xoauth2" else base64.b64encode(b"\x01").decode("ascii")


def describe_challenge(challenge: bytes | str) -> str:
    """The ``status`` of a server's base64 JSON error challenge (``invalid_token``, ``401``),
    or '' when it is not one."""
    try:
        raw = base64.b64decode(challenge, validate=True)
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    return _safe(data.get("status"))

"""A small OAuth2 authorization server on loopback, for the OAuth2 sign-in tests.

It issues access tokens for the refresh-token grant (RFC 6749 section 6) at ``/token`` and
answers token introspection (RFC 7662) at ``/introspect``, which is where Dovecot's oauth2
passdb checks every XOAUTH2/OAUTHBEARER login (infra/dovecot.py points it there). Tests
register people, revoke or expire their tokens, and switch refresh-token rotation on, the way
a real identity provider's admin would.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class _Grant:
    username: str
    client_id: str
    rotate: bool
    active: bool = True


@dataclass
class _Access:
    username: str
    expires_at: float
    active: bool = True


@dataclass
class TokenServer:
    host: str
    port: int
    lifetime_s: int = 3600
    _refresh: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, _Access] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Requests per username, for tests that count refreshes.
    token_requests: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def token_url(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    # --- what an identity provider's admin does --------------------------------------------

    def register(
        self, username: str, client_id: str = "inboxstream", *, rotate: bool = False
    ) -> str:
        """A refresh token for ``username`` (what a person's consent would yield)."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = _Grant(username, client_id, rotate)
        return token

    def revoke_access(self, username: str) -> int:
        """Every access token of the person stops working (refresh tokens still do)."""
        with self._lock:
            hits = [a for a in self._access.values() if a.username == username and a.active]
            for access in hits:
                access.active = False
        return len(hits)

    def revoke_refresh(self, username: str) -> None:
        """Sign the person out everywhere: refresh and access tokens stop working."""
        with self._lock:
            for grant in self._refresh.values():
                if grant.username == username:
                    grant.active = False
        self.revoke_access(username)

    def live_refresh_tokens(self, username: str) -> list[str]:
        with self._lock:
            return [t for t, g in self._refresh.items() if g.username == username and g.active]

    # --- the endpoints ------------------------------------------------------------------

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            grant = self._refresh.get(form.get("refresh_token", ""))
            if grant is None or not grant.active:
                return 400, {"error": "invalid_grant", "error_description": "token revoked"}
            if grant.client_id != form.get("client_id"):
                return 401, {"error": "invalid_client"}
            self.token_requests[grant.username] = self.token_requests.get(grant.username, 0) + 1
            access = "at-" + secrets.token_urlsafe(24)
            self._access[access] = _Access(grant.username, time.time() + self.lifetime_s)
            body: dict[str, object] = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.lifetime_s,
            }
            if grant.rotate:  # the old refresh token is spent, a new one replaces it
                grant.active = False
                rotated = "rt-" + secrets.token_urlsafe(24)
                self._refresh[rotated] = _Grant(grant.username, grant.client_id, True)
                body["refresh_token"] = rotated
        return 200, body

    def _introspect(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self._lock:
            access = self._access.get(form.get("token", ""))
            if access is None or not access.active or access.expires_at < time.time():
                return 200, {"active": False}
            return 200, {"active": True, "username": access.username}

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                if self.path == "/token":
                    status, body = server._token(form)
                elif self.path == "/introspect":
                    status, body = server._introspect(form)
                else:
                    status, body = 404, {"error": "not_found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # tokens travel in bodies, not in the request line; keep test output quiet

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

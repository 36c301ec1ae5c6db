"""OAuth2 sign-in on the real Dovecot and Postfix: SASL XOAUTH2 and OAUTHBEARER with tokens
that Dovecot's oauth2 passdb checks at a loopback token server (tests/helpers/oauth_server.py).

A revoked access token is replaced once and the login goes on; a revoked refresh token stops
the inbox with a ``disconnected`` status that says why; a new sign-in starts it again; a
rotated refresh token is stored back, encrypted, and used from then on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from inboxstream.core.oauth import TokenSources
from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.imap.connection import ImapConnection, endpoint_for_inbox
from inboxstream.imap.exceptions import AuthError
from inboxstream.infra import dovecot
from inboxstream.producers.registry import InboxRegistry
from inboxstream.schemas.models import StatusEvent
from inboxstream.send.sender import smtp_endpoint
from inboxstream.send.smtp import SmtpAuthError, submit
from tests.helpers.oauth_server import TokenServer
from tests.helpers.send import Person
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    idle_on,
    new_messages,
    readers,
    running_service,
)


@pytest.fixture(scope="module")
def token_server(dovecot_server: dovecot.DovecotEndpoints) -> Iterator[TokenServer]:
    """The identity provider Dovecot's oauth2 passdb asks (its introspection URL)."""
    server = TokenServer(dovecot_server.host, dovecot_server.oauth_port).start()
    try:
        yield server
    finally:
        server.stop()


def oauth_inbox(
    person: Person, server: TokenServer, refresh_token: str, mechanism: str = "xoauth2"
) -> InboxSettings:
    data = person.inbox().model_dump(exclude={"password"})
    data |= {
        "auth": mechanism,
        "oauth": {
            "token_url": server.token_url,
            "client_id": "inboxstream",
            "refresh_token": refresh_token,
        },
    }
    return InboxSettings.model_validate(data)


async def mail_to_self(inbox: InboxSettings, tokens: TokenSources, subject: str) -> int:
    """Submit one message from the inbox to itself over SMTP, signed in with OAuth2."""
    raw = f"From: {inbox.username}\r\nTo: {inbox.username}\r\nSubject: {subject}\r\n\r\nhi\r\n"
    accepted = await submit(
        smtp_endpoint(inbox),
        inbox.username,
        tokens.credentials(inbox),
        sender=inbox.username,
        recipients=[inbox.username],
        raw=raw.encode(),
    )
    return accepted.code


def logins(user: str, method: str) -> int:
    """Successful logins of ``user`` with ``method`` in Dovecot's log."""
    text = Path(dovecot.log_path()).read_text(errors="replace")
    return sum(1 for line in text.splitlines() if f"Login: user=<{user}>, method={method}," in line)


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_imap_and_smtp_sign_in_with_an_access_token(
    people: Callable[..., Person], token_server: TokenServer, mechanism: str
) -> None:
    ann = people(f"oa{mechanism[:3]}")
    inbox = oauth_inbox(ann, token_server, token_server.register(ann.name), mechanism)
    tokens = TokenSources()

    conn = await ImapConnection.open(
        endpoint_for_inbox(inbox), inbox.username, tokens.credentials(inbox)
    )
    try:
        assert "IDLE" in conn.capabilities  # the authenticated state's capabilities
    finally:
        await conn.logout()
    assert logins(ann.name, mechanism.upper()) == 1

    assert await mail_to_self(inbox, tokens, f"via {mechanism}") == 250
    arrived = await asyncio.to_thread(ann.wait_for, "INBOX", 1)
    assert f"Subject: via {mechanism}".encode() in arrived[0]
    # One access token served both logins: it is kept until shortly before it expires.
    assert token_server.token_requests[ann.name] == 1


async def test_a_refused_token_is_replaced_once_and_a_revoked_sign_in_is_an_auth_error(
    people: Callable[..., Person], token_server: TokenServer
) -> None:
    bo = people("oarev")
    refresh_token = token_server.register(bo.name)
    inbox = oauth_inbox(bo, token_server, refresh_token)
    tokens = TokenSources()
    conn = await ImapConnection.open(
        endpoint_for_inbox(inbox), inbox.username, tokens.credentials(inbox)
    )
    await conn.logout()

    # The provider revoked the access token early: the server refuses it, a fresh one is
    # fetched and the login goes through, IMAP and SMTP alike.
    assert token_server.revoke_access(bo.name) == 1
    conn = await ImapConnection.open(
        endpoint_for_inbox(inbox), inbox.username, tokens.credentials(inbox)
    )
    await conn.logout()
    assert token_server.token_requests[bo.name] == 2
    token_server.revoke_access(bo.name)
    assert await mail_to_self(inbox, tokens, "after a revoked token") == 250
    assert token_server.token_requests[bo.name] == 3

    # The person was signed out everywhere: not retriable, says why, no secret in it.
    token_server.revoke_refresh(bo.name)
    with pytest.raises(AuthError) as info:
        await ImapConnection.open(
            endpoint_for_inbox(inbox), inbox.username, tokens.credentials(inbox)
        )
    assert not info.value.retriable
    assert "invalid_grant" in str(info.value)
    assert refresh_token not in str(info.value)
    with pytest.raises(SmtpAuthError) as smtp_info:
        await mail_to_self(inbox, tokens, "signed out")
    assert "invalid_grant" in str(smtp_info.value)


async def test_service_rotates_refresh_tokens_reports_a_revoked_sign_in_and_recovers(
    settings: Settings, people: Callable[..., Person], token_server: TokenServer, tmp_path: Path
) -> None:
    cy = people("oasvc")
    first = token_server.register(cy.name, rotate=True)
    s = fast_settings(settings, tmp_path / "inboxes")
    registry = InboxRegistry(s.producer.registry_dir)
    inbox = oauth_inbox(cy, token_server, first)
    registry.add(inbox)
    await asyncio.to_thread(deliver_many, cy.name, 2)
    async with readers(s) as (messages, status), running_service(s):
        await status.wait_for(idle_on("INBOX"), what="INBOX idle")
        await messages.wait_for(lambda ev: len(new_messages(ev, "INBOX")) == 2, what="2 msgs")

        # Each refresh rotated the refresh token; the newest is stored back, encrypted.
        stored = registry.load()[inbox.id].oauth
        assert stored is not None
        assert stored.refresh_token.get_secret_value() != first
        assert token_server.live_refresh_tokens(cy.name) == [
            stored.refresh_token.get_secret_value()
        ]
        on_disk = (s.producer.registry_dir / f"{inbox.id}.json").read_text()
        assert "rt-" not in on_disk and "refresh_token_encrypted" in json.loads(on_disk)["oauth"]

        # Access revoked and the sessions closed: the service reconnects with a fresh token.
        before = token_server.token_requests[cy.name]
        token_server.revoke_access(cy.name)
        await asyncio.to_thread(dovecot.kick, cy.name)
        await asyncio.to_thread(deliver_many, cy.name, 1, start=2)
        await messages.wait_for(lambda ev: len(new_messages(ev, "INBOX")) == 3, what="msg 3")
        assert token_server.token_requests[cy.name] > before
        events: list[StatusEvent] = await status.read_to_end()
        assert not [e for e in events if e.state == "disconnected" and e.retriable is False]

        # Signed out everywhere: the inbox stops with the reason, and does not hammer.
        token_server.revoke_refresh(cy.name)
        await asyncio.to_thread(dovecot.kick, cy.name)
        events = await status.wait_for(
            lambda ev: any(e.state == "disconnected" and e.retriable is False for e in ev),
            what="disconnected for good",
        )
        down = next(e for e in events if e.state == "disconnected" and e.retriable is False)
        assert down.error_kind == "auth"
        assert "invalid_grant" in (down.reason or "")
        assert "rt-" not in (down.reason or "") and "at-" not in (down.reason or "")

        # The person signs in again: the new refresh token starts the inbox again.
        second = token_server.register(cy.name)
        registry.add(
            inbox.model_copy(
                update={
                    "oauth": inbox.oauth.model_copy(update={"refresh_token": SecretStr(second)})
                }
            )
        )
        started = time.monotonic()
        await asyncio.to_thread(deliver_many, cy.name, 1, start=3)
        got = await messages.wait_for(
            lambda ev: len(new_messages(ev, "INBOX")) == 4, what="msg 4 after the new sign-in"
        )
        assert {e.subject for e in new_messages(got)} >= {"bulk 3"}
        assert time.monotonic() - started < 60

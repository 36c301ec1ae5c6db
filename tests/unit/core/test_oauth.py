"""OAuth2 sign-in, the pure parts: SASL strings against the published examples, the token
source's caching, refresh, rotation and errors (against a loopback token server), the
settings rules and the registry's encryption of the OAuth2 secrets."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from inboxstream.core.oauth import (
    OAuthError,
    TokenRejectedError,
    TokenSource,
    TokenSources,
    abort_response,
    describe_challenge,
    initial_response,
)
from inboxstream.core.settings import InboxSettings, OAuthSettings
from inboxstream.core.vault import SecretBox
from inboxstream.producers.registry import InboxRegistry, inbox_fingerprint, with_refresh_token
from tests.helpers.oauth_server import TokenServer


@pytest.fixture
def server() -> Iterator[TokenServer]:
    srv = TokenServer("127.0.0.1", 0)
    srv.start()
    assert srv._server is not None
    srv.port = srv._server.server_address[1]
    try:
        yield srv
    finally:
        srv.stop()


def settings_for(server: TokenServer, refresh_token: str) -> OAuthSettings:
    return OAuthSettings(
        token_url=server.token_url, client_id="inboxstream", refresh_token=SecretStr(refresh_token)
    )


def oauth_inbox(refresh_token: str = "rt-1", **oauth: object) -> InboxSettings:
    return InboxSettings.model_validate(
        {
            "id": "ann@example.com",
            "imap_host": "imap.example.com",
            "username": "ann@example.com",
            "auth": "xoauth2",
            "oauth": {
                "token_url": "https://login.example.com/token",
                "client_id": "app",
                "refresh_token": refresh_token,
            }
            | oauth,
        }
    )


# --- SASL ------------------------------------------------------------------------------------


def test_xoauth2_matches_googles_documented_example() -> None:
    # developers.google.com/gmail/imap/xoauth2-protocol
    assert initial_response(
        "xoauth2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", "", 0
    ) == (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_oauthbearer_matches_rfc7628_and_escapes_the_name() -> None:
    raw = base64.b64decode(
        initial_response(
            "oauthbearer",
            "user@example.com",
            "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==",
            "server.example.com",
            143,
        )
    )
    # RFC 7628 section 4.1
    assert raw == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
    )
    odd = base64.b64decode(initial_response("oauthbearer", "a,b=c", "t", "h", 1))
    assert odd.startswith(b"n,a=a=2Cb=3Dc,\x01")


def test_abort_responses_and_error_challenges() -> None:
    assert abort_response("xoauth2") == ""
    assert base64.b64decode(abort_response("oauthbearer")) == b"\x01"
    challenge = base64.b64encode(json.dumps({"status": "invalid_token"}).encode())
    assert describe_challenge(challenge) == "invalid_token"
    assert describe_challenge(b"not base64!") == ""
    assert describe_challenge(base64.b64encode(b"[1]")) == ""


@given(st.binary(max_size=200))
def test_describe_challenge_never_raises(data: bytes) -> None:
    assert isinstance(describe_challenge(data), str)


# --- the token source ------------------------------------------------------------------------


async def test_a_token_is_kept_until_shortly_before_it_expires(server: TokenServer) -> None:
    now = [1000.0]
    server.lifetime_s = 300
    source = TokenSource("ann", settings_for(server, server.register("ann")), clock=lambda: now[0])
    first = await source.token()
    assert await source.token() == first
    now[0] += 300 - 61  # still more than a minute left
    assert await source.token() == first
    now[0] += 2  # less than a minute left: refreshed before it can expire mid-login
    second = await source.token()
    assert second != first
    assert server.token_requests["ann"] == 2


async def test_a_rejected_token_is_replaced_once_per_rejection(server: TokenServer) -> None:
    source = TokenSource("bo", settings_for(server, server.register("bo")))
    first = await source.token()
    second = await source.token(rejected=first)
    assert second != first
    # Another connection reports the same stale token: the new one is already there.
    assert await source.token(rejected=first) == second
    assert server.token_requests["bo"] == 2


async def test_rotation_is_stored_and_old_tokens_are_never_adopted_again(
    server: TokenServer,
) -> None:
    stored: list[tuple[str, str]] = []

    async def store(inbox_id: str, token: str) -> None:
        stored.append((inbox_id, token))

    first = server.register("cy", rotate=True)
    sources = TokenSources(store)
    inbox = oauth_inbox(first).model_copy(update={"oauth": settings_for(server, first), "id": "cy"})
    source = sources.source(inbox)
    assert source is not None
    await source.token()
    await source.token(rejected=await source.token())
    assert [i for i, _ in stored] == ["cy", "cy"]
    assert source.refresh_token == stored[-1][1] == server.live_refresh_tokens("cy")[0]
    # The registry, read before the store landed, still says the first token: ignored.
    assert sources.offer(inbox) is False
    assert source.refresh_token == stored[-1][1]
    # A token the source never had (a new sign-in) is adopted.
    fresh = server.register("cy")
    assert sources.offer(with_refresh_token(inbox, fresh)) is True
    assert source.refresh_token == fresh


async def test_a_refused_grant_is_final_and_an_outage_is_retriable(server: TokenServer) -> None:
    secret = server.register("dee")
    server.revoke_refresh("dee")
    with pytest.raises(TokenRejectedError) as info:
        await TokenSource("dee", settings_for(server, secret)).token()
    assert not info.value.retriable
    assert "invalid_grant" in str(info.value) and secret not in str(info.value)

    wrong_client = OAuthSettings(
        token_url=server.token_url,
        client_id="someone-else",
        refresh_token=SecretStr(server.register("dee")),
    )
    with pytest.raises(TokenRejectedError, match="invalid_client"):
        await TokenSource("dee", wrong_client).token()

    gone = OAuthSettings(
        token_url="http://127.0.0.1:9/token", client_id="x", refresh_token=SecretStr("rt-zz")
    )
    with pytest.raises(OAuthError) as outage:
        await TokenSource("dee", gone).token()
    assert outage.value.retriable and "rt-zz" not in str(outage.value)


# --- settings and registry -------------------------------------------------------------------


def test_settings_require_the_credentials_of_the_chosen_method() -> None:
    with pytest.raises(ValidationError, match="needs a password"):
        InboxSettings(id="a", imap_host="h", username="u")
    with pytest.raises(ValidationError, match="needs the oauth settings"):
        InboxSettings(id="a", imap_host="h", username="u", auth="oauthbearer")
    with pytest.raises(ValidationError, match="https"):
        oauth_inbox(token_url="http://login.example.com/token")
    assert oauth_inbox(token_url="http://127.0.0.1:8080/token").oauth is not None


def test_registry_encrypts_oauth_secrets_and_rotation_keeps_the_fingerprint(
    tmp_path: Path,
) -> None:
    registry = InboxRegistry(tmp_path, SecretBox(tmp_path / "key"))
    inbox = oauth_inbox("rt-secret-1", client_secret="cs-secret")
    registry.add(inbox)
    text = (tmp_path / f"{inbox.id}.json").read_text()
    assert "rt-secret-1" not in text and "cs-secret" not in text
    loaded = registry.load()[inbox.id]
    assert loaded.oauth is not None
    assert loaded.oauth.refresh_token.get_secret_value() == "rt-secret-1"
    assert loaded.oauth.client_secret is not None
    assert loaded.oauth.client_secret.get_secret_value() == "cs-secret"

    registry.store_refresh_token(inbox.id, "rt-secret-2")
    rotated = registry.load()[inbox.id]
    assert (
        rotated.oauth is not None
        and rotated.oauth.refresh_token.get_secret_value() == "rt-secret-2"
    )
    # A rotation must not restart the inbox; a new client secret must.
    assert inbox_fingerprint(rotated) == inbox_fingerprint(inbox)
    assert inbox_fingerprint(oauth_inbox("rt-secret-1", client_secret="other")) != (
        inbox_fingerprint(inbox)
    )


def test_a_clear_refresh_token_in_a_file_is_rewritten_encrypted(tmp_path: Path) -> None:
    registry = InboxRegistry(tmp_path, SecretBox(tmp_path / "key"))
    data = oauth_inbox("rt-plain").model_dump(mode="json")
    data["oauth"]["refresh_token"] = "rt-plain"
    (tmp_path / "ann@example.com.json").write_text(json.dumps(data))
    assert registry.load()["ann@example.com"].oauth is not None
    assert "rt-plain" not in (tmp_path / "ann@example.com.json").read_text()

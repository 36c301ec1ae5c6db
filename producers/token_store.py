"""Where a rotated OAuth2 refresh token goes: back into the inbox's registry record.

Identity providers may rotate the refresh token on every use (Microsoft does for single-page
clients, many Keycloak realms do always); the old one then stops working, so the new one must
be stored before the process could restart. The folder registry rewrites the inbox's file,
the registry topic gets a new record, both with the token encrypted (core/vault.py). An inbox
from the config file has nowhere to store it: that is an error the token source logs, and the
new token stays in use in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from inboxstream.core.settings import Settings
from inboxstream.core.vault import SecretBox
from inboxstream.producers.registry import registry_for
from inboxstream.producers.registry_topic import TopicRegistry


def refresh_token_store(settings: Settings) -> Callable[[str, str], Awaitable[None]]:
    """``store(inbox_id, refresh_token)`` for the registry the settings name."""
    if settings.producer.registry == "topic":
        topic = TopicRegistry(settings, SecretBox.default(settings.producer.secret_key_file))
        return topic.store_refresh_token
    folder = registry_for(settings)

    async def store(inbox_id: str, refresh_token: str) -> None:
        await asyncio.to_thread(folder.store_refresh_token, inbox_id, refresh_token)

    return store

"""The real services' test users."""

from __future__ import annotations

from dataclasses import dataclass, field

from inboxstream.app.demo import demo_inbox
from inboxstream.core.settings import InboxSettings


@dataclass(frozen=True)
class MailUser:
    name: str
    password: str = field(repr=False)

    def inbox(self) -> InboxSettings:
        return demo_inbox(self.password, self.name)

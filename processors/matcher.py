"""CRM reply matching: by references to Message-IDs the CRM sent or logged, never by subject.

A message is a reply when its In-Reply-To names a CRM Message-ID (``matched_by="in_reply_to"``)
or, failing that, any id in its References does (``"references"``, the closest one wins: the
list runs from the thread's root to the parent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

MatchedBy = Literal["in_reply_to", "references"]


@dataclass(frozen=True)
class Match:
    crm_message_id: str
    matched_by: MatchedBy

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(self, crm_message_id: str, matched_by: MatchedBy) -> None:
        object.__setattr__(self, "crm_message_id", crm_message_id)
        object.__setattr__(self, "matched_by", matched_by)


def find_match(
    message_id: str,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    crm: Container[str],
) -> Match | None:
    """The CRM mail this message answers, if any (``crm``: the CRM's Message-IDs). A CRM mail
    is not a reply to itself."""
    # ``in``, not a callable such as ``crm.__contains__``: a Python-level call per id was
    # most of the cost for a reply's 20 references.
    for mid in in_reply_to:
        if mid != message_id and mid in crm:
            return Match(mid, "in_reply_to")
    for mid in reversed(references):
        if mid != message_id and mid in crm:
            return Match(mid, "references")
    return None


def engagement_id(inbox_id: str, reply_message_id: str) -> str:
    """Stable: the same reply (in any folder, in any replay) is the same engagement."""
    return hashlib.sha256(f"engagement\0{inbox_id}\0{reply_message_id}".encode()).hexdigest()[:32]


def lifecycle_event_id(eng_id: str, event_type: str) -> str:
    return hashlib.sha256(f"{eng_id}\0{event_type}".encode()).hexdigest()[:32]

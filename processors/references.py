"""RFC 5256 (1)(A): the ids a message refers to, as both threading paths read them.

A module of its own so that it is compiled with the record path (``inboxstream._compiled``):
``processors.jwz``, the batch algorithm, is not (its generic dataclasses do not compile), and
the incremental threading calls this for every message, up to 20 ids each.
"""

from __future__ import annotations

from collections.abc import Sequence

from inboxstream.mail.limits import MAX_REFERENCES, cap_references


def reference_ids(references: Sequence[str], in_reply_to: Sequence[str]) -> list[str]:
    """References, or else the first In-Reply-To id; duplicates and empty ids dropped. A list
    longer than ``MAX_REFERENCES`` (events from before the producer capped it, or an mbox) is
    capped here the same way, so the work per message stays bounded."""
    if not references:
        first = in_reply_to[0] if in_reply_to else ""
        return [first] if first else []
    # One pass and one set, compiled: ``dict.fromkeys`` and the copies around it cost 1.5 µs
    # for the 20 ids of a reply in a long conversation, on every message.
    ids: list[str] = []
    seen: set[str] = set()
    for ref in references:
        if ref and ref not in seen:
            seen.add(ref)
            ids.append(ref)
    return ids if len(ids) <= MAX_REFERENCES else cap_references(ids)[0]

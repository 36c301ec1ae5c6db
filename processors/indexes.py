"""Indexes from a key to the set of ids that carry it (Message-ID -> messages, thread id ->
members, referenced id -> held replies): the two steps every one of them takes."""

from __future__ import annotations


def add_to(index: dict[str, set[str]], key: str, value: str) -> None:
    """``index.setdefault(key, set()).add(value)`` without building a set on every call (most
    keys are there already: a thread's id, a Message-ID that many replies reference)."""
    found = index.get(key)
    if found is None:
        index[key] = {value}
    else:
        found.add(value)


def discard_from(index: dict[str, set[str]], key: str, value: str) -> None:
    """Take ``value`` out of ``key``'s set, and the key out when its set is empty."""
    found = index.get(key)
    if found is not None:
        found.discard(value)
        if not found:
            del index[key]

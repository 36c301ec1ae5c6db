"""Threading by RFC 5256 ``REFERENCES`` (the JWZ algorithm), pure and deterministic.

``thread_messages`` takes messages in mailbox order (the order decides which of two messages
with the same Message-ID is "first", and ties between equal dates) and returns the threads as
groups of caller keys. Two algorithms:

* ``rfc5256``: steps 1-5 of RFC 5256 section 3 including the merge of roots by base subject;
* ``references``: the same links, no subject merge (what CRM matching relies on).

Incremental use (the stream processor): the processor keeps each inbox's message metadata and
recomputes the threads of that inbox once per batch with this same function, then maps the new
groups onto the thread ids it already handed out. That gives exactly the batch answer for any
split into batches, at O(messages of the inbox) per batch, which is cheap next to Kafka I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

from inboxstream.processors.references import reference_ids
from inboxstream.processors.subject import base_subject

Algorithm = Literal["rfc5256", "references"]
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class ThreadInput(Generic[K]):
    """What threading needs of one message; ``key`` is the caller's handle for it."""

    key: K
    message_id: str | None
    references: tuple[str, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    subject: str | None = None
    date: datetime | None = None


@dataclass(frozen=True)
class Thread(Generic[K]):
    """One conversation: member keys in mailbox order, and what identifies its root."""

    keys: tuple[K, ...]
    root_message_id: str | None
    base_subject: str


@dataclass(eq=False)
class _Container(Generic[K]):
    message_id: str
    seq: int = -1  # mailbox position of the message, -1 for a placeholder (dummy)
    message: ThreadInput[K] | None = None
    parent: _Container[K] | None = None
    children: list[_Container[K]] = field(default_factory=list)

    def is_ancestor_of(self, other: _Container[K]) -> bool:
        node: _Container[K] | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _link(parent: _Container[K], child: _Container[K]) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Container[K]) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def thread_references(msg: ThreadInput[K]) -> list[str]:
    """RFC 5256 (1)(A) for one message (see ``reference_ids``)."""
    return reference_ids(msg.references, msg.in_reply_to)


def thread_messages(
    messages: Sequence[ThreadInput[K]], algorithm: Algorithm = "rfc5256"
) -> list[Thread[K]]:
    """Group ``messages`` into threads; every message lands in exactly one thread.

    Threads come back ordered by their first member's mailbox position.
    """
    table: dict[str, _Container[K]] = {}
    for seq, msg in enumerate(messages):
        mid = msg.message_id or ""
        if not mid or (mid in table and table[mid].message is not None):
            # No or duplicate Message-ID: the first carrier keeps it; this one gets an id that
            # nothing can reference (RFC 5256 (1)(A)).
            mid = f"\x00unique-{seq}"
        container = table.get(mid)
        if container is None:
            container = table[mid] = _Container(mid)
        container.message, container.seq = msg, seq

        prev: _Container[K] | None = None
        for ref in thread_references(msg):
            node = table.get(ref)
            if node is None:
                node = table[ref] = _Container(ref)
            # (1)(B): link consecutive references unless already linked or a loop would form.
            if prev is not None and node.parent is None and not node.is_ancestor_of(prev):
                _link(prev, node)
            prev = node
        # (1)(C): the last reference is the parent; a previous parent link is broken first.
        _unlink(container)
        if prev is not None and not container.is_ancestor_of(prev):
            _link(prev, container)

    roots = [c for c in table.values() if c.parent is None]
    groups: list[tuple[_Container[K], list[_Container[K]]]] = []
    for root in roots:
        members = _members(root)
        if members:
            groups.append((root, members))

    if algorithm == "rfc5256":
        groups = _merge_by_subject(groups)

    threads: list[tuple[int, Thread[K]]] = []
    for root, members in groups:
        members.sort(key=lambda c: c.seq)
        subject_root = _subject_container(root, members)
        subject = subject_root.message.subject if subject_root and subject_root.message else None
        threads.append(
            (
                members[0].seq,
                Thread(
                    keys=tuple(c.message.key for c in members if c.message is not None),
                    root_message_id=(
                        subject_root.message.message_id
                        if subject_root and subject_root.message
                        else None
                    ),
                    base_subject=base_subject(subject),
                ),
            )
        )
    threads.sort(key=lambda t: t[0])
    return [t for _, t in threads]


def _members(root: _Container[K]) -> list[_Container[K]]:
    """The real messages under ``root`` (placeholders are skipped, which is step 3's pruning
    as far as membership goes)."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.message is not None:
            out.append(node)
        stack.extend(node.children)
    return out


def _sort_key(c: _Container[K]) -> tuple[int, float, int]:
    """RFC 5256 step 4 order: sent date, then mailbox order; no date sorts by order only."""
    date = c.message.date if c.message is not None else None
    return (0, date.timestamp(), c.seq) if date else (0, 0.0, c.seq)


def _subject_container(root: _Container[K], members: list[_Container[K]]) -> _Container[K] | None:
    """Whose subject is the thread's (step 5 (A)): the root's, or for a placeholder root that
    step 3 keeps (two or more children) its first child by sent date; a placeholder root with
    one real child line is replaced by that child."""
    node = root
    while node.message is None:
        kids = _pruned_children(node)
        if not kids:
            return None
        if len(kids) > 1:
            return min(kids, key=_sort_key)
        node = kids[0]
    return node


def _pruned_children(node: _Container[K]) -> list[_Container[K]]:
    """Children after step 3: placeholders vanish and hand their children up. Iterative: a
    chain of placeholders is as long as a sender's References list."""
    out: list[_Container[K]] = []
    stack = list(reversed(node.children))
    while stack:
        child = stack.pop()
        if child.message is not None:
            out.append(child)
        else:
            stack.extend(reversed(child.children))
    return out


def _merge_by_subject(
    groups: list[tuple[_Container[K], list[_Container[K]]]],
) -> list[tuple[_Container[K], list[_Container[K]]]]:
    """Step 5: roots whose thread subjects have the same non-empty base subject are one thread."""
    by_subject: dict[str, int] = {}
    merged: list[tuple[_Container[K], list[_Container[K]]]] = []
    for root, members in groups:
        holder = _subject_container(root, members)
        subject = base_subject(holder.message.subject if holder and holder.message else None)
        if subject and subject in by_subject:
            merged[by_subject[subject]][1].extend(members)
            continue
        if subject:
            by_subject[subject] = len(merged)
        merged.append((root, list(members)))
    return merged

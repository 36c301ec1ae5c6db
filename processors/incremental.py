"""Threading one message at a time, at a cost that does not grow with its thread.

``InboxThreads`` keeps one inbox's RFC 5256 id table (the containers of ``processors.jwz``)
alive between messages. Step 1 of the algorithm already walks messages one at a time in
arrival order, so running it for one new message on the kept table gives exactly the table the
batch algorithm builds over all the inbox's messages in arrival order. What the batch then
derives from the table (a thread per root with real messages, roots merged by base subject) is
kept as *groups*, each with the one thread id all its members carry and a few aggregates
(members, first arrival, last observed time, the root that names it).

Adding a message then touches only the trees its Message-ID and references reach:

* the common cases need no walk of the thread: the message joins one group (one
  ``thread.assigned``), starts a new one, or whole groups merge (a bridge or a late parent:
  ``thread.merged`` plus an assignment per member that changes id, found through the id index);
* a cut (RFC 5256 (1)(C): the message moves a link another message made) or a group that breaks
  apart (a root that leaves its subject group, a subject that changes) re-assigns the groups
  involved member by member with ``assign.assign_groups``, the same code and rules as the
  batch path. That is today's per-component work, on the rare messages that need it.

Either way the events equal those of re-threading the inbox with the batch algorithm and
``assign.assign_groups``; ``tests/unit/processors/test_incremental.py`` checks that against the
batch algorithm and the component re-threading this module replaced, event for event.

Removing messages (event-time expiry) and loading them (state restore) mark the table stale;
the next ``add`` rebuilds it from the entries in arrival order (one pass over the inbox), and a
group whose members do not all carry one id of their own (expiry can split or join threads) is
marked unsettled, so the next message that touches it re-assigns it member by member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inboxstream.mail.limits import MAX_REFERENCES
from inboxstream.processors.assign import (
    Group,
    MessageEntry,
    assign_groups,
    assigned_event,
    merged_event,
    new_thread_id,
)
from inboxstream.processors.indexes import add_to, discard_from
from inboxstream.processors.jwz import Algorithm
from inboxstream.processors.references import reference_ids
from inboxstream.processors.subject import base_subject
from inboxstream.schemas.models import ThreadRecord


@dataclass(eq=False, slots=True)
class _Node:
    """A container of the id table: a message, or a placeholder for an id only referenced."""

    mid: str
    order: int  # creation order: the batch's table order, which picks a group's naming root
    entry: MessageEntry | None = None
    parent: _Node | None = None
    children: dict[_Node, None] = field(default_factory=dict)  # ordered set, O(1) unlink
    # Kept on roots only: the group the tree belongs to, and whose subject names the tree.
    group: _Group | None = None
    holder: _Node | None = None
    subject: str = ""

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        mid: str,
        order: int,
        entry: MessageEntry | None = None,
        parent: _Node | None = None,
        children: dict[_Node, None] | None = None,
        group: _Group | None = None,
        holder: _Node | None = None,
        subject: str = "",
    ) -> None:
        self.mid = mid
        self.order = order
        self.entry = entry
        self.parent = parent
        self.children = dict() if children is None else children
        self.group = group
        self.holder = holder
        self.subject = subject


@dataclass(eq=False, slots=True)
class _Group:
    """One thread: trees (by root) with real messages, merged by base subject (``rfc5256``)."""

    roots: dict[_Node, None]
    subject: str  # the merge key; "" for a group of one tree without a subject
    tid: str | None  # the id every member carries; None: unsettled (mixed or shared ids)
    count: int
    min_seq: int
    max_obs: int
    rep: _Node  # the root first in table order, whose subject holder names the thread

    # Written out, not generated: mypyc compiles it (dataclasses' own runs interpreted).
    def __init__(
        self,
        roots: dict[_Node, None],
        subject: str,
        tid: str | None,
        count: int,
        min_seq: int,
        max_obs: int,
        rep: _Node,
    ) -> None:
        self.roots = roots
        self.subject = subject
        self.tid = tid
        self.count = count
        self.min_seq = min_seq
        self.max_obs = max_obs
        self.rep = rep

    def named(self) -> tuple[str | None, str]:
        holder = self.rep.holder
        entry = holder.entry if holder is not None else None
        return (entry.message_id if entry else None), base_subject(entry.subject if entry else None)

    def as_group(self, members: list[MessageEntry]) -> Group:
        root_message_id, subject = self.named()
        return Group(members, root_message_id, subject)


def _root(node: _Node) -> _Node:
    while node.parent is not None:
        node = node.parent
    return node


def _roots(nodes: list[_Node]) -> dict[_Node, _Node]:
    """Each node's root; a message's references are mostly one chain, so every walk stops at
    the first node whose root is already known (depth plus references, not their product)."""
    known: dict[_Node, _Node] = {}
    for start in nodes:
        path: list[_Node] = []
        node = start
        while node not in known and node.parent is not None:
            path.append(node)
            node = node.parent
        root = known.get(node, node)
        known[node] = root
        for n in path:
            known[n] = root
    return known


def _share_ids(entry: MessageEntry, ref_ids: list[str]) -> None:
    """Let ``entry`` hold the id table's strings for its references, ``ref_ids`` once each
    element is its node's ``mid``. Every message decoded its own copy of the ids it refers
    to: a reply in a long conversation kept 20 strings that its ancestors' entries already
    hold (the engine's RSS after 50,000 messages of one conversation: 312 MB, 268-272 with
    the strings shared), with the page faults that come with it. The entry's lists keep
    their contents (and so its changelog record): they are swapped only when equal to
    ``ref_ids``, which is the common case (no duplicate or empty id, References present)."""
    refs = entry.references
    if refs is not ref_ids and refs == ref_ids:
        entry.references = ref_ids
    irt = entry.in_reply_to
    if irt and ref_ids and irt[0] == ref_ids[-1]:
        irt[0] = ref_ids[-1]


def _is_ancestor(node: _Node, other: _Node) -> bool:
    walk: _Node | None = other
    while walk is not None:
        if walk is node:
            return True
        walk = walk.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    child.parent = parent
    parent.children[child] = None


def _unlink(child: _Node) -> None:
    if child.parent is not None:
        del child.parent.children[child]
        child.parent = None


def _members(root: _Node) -> list[MessageEntry]:
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.entry is not None:
            out.append(node.entry)
        stack.extend(node.children)
    return out


def _sort_key(node: _Node) -> tuple[int, int]:
    """RFC 5256 step 4 order (as ``jwz._sort_key``): sent date, else observed, then arrival."""
    entry = node.entry
    assert entry is not None
    return (entry.date_ms if entry.date_ms is not None else entry.observed_ms, entry.seq)


def _holder(root: _Node) -> _Node | None:
    """Whose subject is the tree's (as ``jwz._subject_container``)."""
    node = root
    while node.entry is None:
        kids: list[_Node] = []
        stack = list(reversed(node.children))
        while stack:
            child = stack.pop()
            if child.entry is not None:
                kids.append(child)
            else:
                stack.extend(reversed(child.children))
        if not kids:
            return None
        if len(kids) > 1:
            return min(kids, key=_sort_key)
        node = kids[0]
    return node


class InboxThreads:
    """The thread index of one inbox, updated one message at a time (module docstring)."""

    def __init__(
        self, inbox_id: str, algorithm: Algorithm = "rfc5256", *, shortcuts: bool = True
    ) -> None:
        self.inbox_id = inbox_id
        self.algorithm = algorithm
        # False: every message takes the general path (tests hold the shortcuts to it)
        self.shortcuts = shortcuts
        self.entries: dict[str, MessageEntry] = {}
        self._by_tid: dict[str, set[str]] = {}
        self._by_mid: dict[str, set[str]] = {}
        self._by_ref: dict[str, set[str]] = {}
        self._by_base: dict[str, set[str]] = {}
        # The three lookups above serve only ``_component`` (the member-by-member path, rare),
        # so they are built lazily, as the processor's pending-reply index is: the event ids
        # added since the last walk wait here (an ordered set) and are indexed when one comes.
        # Indexing every reference on arrival cost ~1.5 us an event of a long conversation
        # (20 references a message) for lookups most inboxes never make.
        self._unindexed: dict[str, None] = {}
        self._stale = False
        self.reassigned = 0  # adds that took the member-by-member path (module docstring)
        self.joined = 0  # adds that took the reply shortcut (``_reply_joins``)
        self.started = 0  # adds that took the new-thread shortcut (``_starts_thread``)
        self._reset()

    def _reset(self) -> None:
        self._table: dict[str, _Node] = {}
        self._node_of: dict[str, _Node] = {}  # event id -> its container
        self._by_subject: dict[str, _Group] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self.entries)

    def threads(self) -> list[list[str]]:
        """The current grouping from the table (event ids, arrival order), whatever ids the
        members carry: what tests hold against the batch algorithm."""
        if self._stale:
            self._rebuild()
        groups: dict[int, list[MessageEntry]] = {}
        for node in self._table.values():
            if node.parent is None and node.group is not None:
                groups.setdefault(id(node.group), []).extend(_members(node))
        ordered = [sorted(g, key=lambda e: e.seq) for g in groups.values()]
        return [[e.event_id for e in g] for g in sorted(ordered, key=lambda g: g[0].seq)]

    # --- restore and expiry ----------------------------------------------------------------

    def load(self, entry: MessageEntry) -> None:
        """Take an entry as it is (restore); replaces one with the same event id."""
        self.remove(entry.event_id)
        self.entries[entry.event_id] = entry
        self._index_tid(entry, None)
        self._index(entry, True)
        self._stale = True

    def remove(self, event_id: str) -> None:
        entry = self.entries.pop(event_id, None)
        if entry is None:
            return
        self._index(entry, False)
        if entry.thread_id:
            discard_from(self._by_tid, entry.thread_id, event_id)
        self._stale = True

    def _index_tid(self, entry: MessageEntry, old: str | None) -> None:
        if old:
            discard_from(self._by_tid, old, entry.event_id)
        if entry.thread_id:
            add_to(self._by_tid, entry.thread_id, entry.event_id)

    def _rebuild(self) -> None:
        """The table from the entries in arrival order; groups from the table (one pass)."""
        self._reset()
        for entry in sorted(self.entries.values(), key=lambda e: e.seq):
            self._step(entry)
        groups: dict[object, list[_Node]] = {}
        for node in self._table.values():  # table order: a group's first root names it
            if node.parent is None:
                self._refresh(node)
                if node.holder is not None:
                    groups.setdefault(self._key(node), []).append(node)
        holders: dict[str | None, list[_Group]] = {}
        for roots in groups.values():
            members = [e for r in roots for e in _members(r)]
            group = self._group_of(roots, members)
            tids = {e.thread_id for e in members}
            group.tid = next(iter(tids)) if len(tids) == 1 else None
            for tid in tids:  # mixed groups count too: their members still carry the id
                holders.setdefault(tid, []).append(group)
        for tid, shared in holders.items():
            if tid is not None and len(shared) > 1:
                # one id on two threads (one may be mixed): settled by the next message
                for group in shared:
                    group.tid = None
        self._stale = False

    # --- adding ----------------------------------------------------------------------------

    def _new_node(self, mid: str) -> _Node:
        node = self._table[mid] = _Node(mid, self._order)
        self._order += 1
        return node

    def _step(
        self, entry: MessageEntry, ref_ids: list[str] | None = None
    ) -> tuple[_Node, list[_Node], _Node | None]:
        """RFC 5256 step 1 for one message on the kept table (as ``jwz.thread_messages``).
        Returns its container, its reference containers, and the parent a cut took it from."""
        mid = entry.message_id or ""
        node = self._table.get(mid) if mid else None
        if not mid or (node is not None and node.entry is not None):
            # No or duplicate Message-ID: the first carrier keeps it (RFC 5256 (1)(A)).
            node = self._new_node(f"\x00unique-{entry.seq}")
        elif node is None:
            node = self._new_node(mid)
        node.entry = entry
        self._node_of[entry.event_id] = node
        prev: _Node | None = None
        refs: list[_Node] = []
        if ref_ids is None:
            ref_ids = reference_ids(entry.references, entry.in_reply_to)
        for i, ref in enumerate(ref_ids):
            ref_node = self._table.get(ref) or self._new_node(ref)
            ref_ids[i] = ref_node.mid  # the table's own string (``_share_ids``)
            # (1)(B): link consecutive references unless already linked or a loop would form.
            if prev is not None and ref_node.parent is None and not _is_ancestor(ref_node, prev):
                _link(prev, ref_node)
            prev = ref_node
            refs.append(ref_node)
        _share_ids(entry, ref_ids)
        # (1)(C): the last reference is the parent; a previous parent link is broken first.
        old_parent = node.parent
        if old_parent is prev and prev is not None:
            return node, refs, None  # unlink and relink to the same parent: no change
        _unlink(node)
        if prev is not None and not _is_ancestor(node, prev):
            _link(prev, node)
        return node, refs, old_parent

    def _key(self, root: _Node) -> object:
        """Which group a root's tree belongs to: its base subject, or a group of its own."""
        if self.algorithm == "rfc5256" and root.subject:
            return root.subject
        return root

    def _refresh(self, root: _Node) -> None:
        root.holder = _holder(root)
        entry = root.holder.entry if root.holder is not None else None
        root.subject = base_subject(entry.subject) if entry else ""

    def _group_of(self, roots: list[_Node], members: list[MessageEntry]) -> _Group:
        """A new group object over ``roots`` (in table order), registered on them."""
        group = _Group(
            roots=dict.fromkeys(roots),
            subject=roots[0].subject if self._key(roots[0]) is not roots[0] else "",
            tid=None,
            count=len(members),
            min_seq=min(e.seq for e in members),
            max_obs=max(e.observed_ms for e in members),
            rep=min(roots, key=lambda r: r.order),
        )
        for root in roots:
            root.group = group
        if group.subject:
            self._by_subject[group.subject] = group
        return group

    def add(self, entry: MessageEntry) -> tuple[list[ThreadRecord], list[MessageEntry]]:
        """Thread one new message: the events to emit and the entries whose thread changed
        (the new one included)."""
        if self._stale:
            self._rebuild()
        self.entries[entry.event_id] = entry
        # The trees the message can touch, and their groups, before the step.
        mid = entry.message_id or ""
        given = entry.references
        ref_ids: list[str] | None = None
        if mid and self.shortcuts and mid not in self._table:  # a new Message-ID: they may apply
            # The commonest message, a reply under its parent's path, needs no deduplication:
            # a walk up the parent pointers that meets every reference in turn proves them
            # distinct and non-empty (the table's ids are), so ``reference_ids`` would return
            # them as they are. Its set was the only thing on this path to hash the message's
            # freshly decoded ids: 0.7-1.1 µs a message of a long conversation (11 ids).
            parent, top = (
                self._up_the_path(given) if 0 < len(given) <= MAX_REFERENCES else (None, None)
            )
            if parent is not None and top is not None:
                shortcut = self._join_leaf(entry, mid, parent, _root(top), given)
            else:
                ref_ids = reference_ids(given, entry.in_reply_to)
                shortcut = (
                    self._reply_joins(entry, mid, ref_ids)
                    if ref_ids
                    else self._starts_thread(entry, mid)
                )
            if shortcut is not None:
                return shortcut
        if ref_ids is None:
            ref_ids = reference_ids(given, entry.in_reply_to)
        own = self._table.get(mid) if mid else None
        reach = [own] if own is not None and own.entry is None else []  # a duplicate id: unique
        for ref in ref_ids:
            if (ref_node := self._table.get(ref)) is not None:
                reach.append(ref_node)
        known = _roots(reach)
        before = dict.fromkeys(known.values())
        old_groups = dict.fromkeys(r.group for r in before if r.group is not None)

        node, refs, cut_from = self._step(entry, ref_ids)

        known = _roots([node, *refs, *([cut_from] if cut_from else ()), *before])
        lands = {r: known[r] for r in before}  # where each touched tree went
        # the roots whose trees hold messages now: the message's, and where touched trees went
        with_members = dict.fromkeys([known[node], *(lands[r] for r in before if r.group)])
        for root in with_members:
            self._refresh(root)
        new_keys = {self._key(r): None for r in with_members}
        gainers = [
            g
            for k in new_keys
            if isinstance(k, str) and (g := self._by_subject.get(k)) is not None
            if g not in old_groups
        ]
        # The fast path needs every old group settled and landing whole in one new group.
        fast = cut_from is None
        targets: dict[_Group, object] = {}
        for group in (*old_groups, *gainers):
            if not fast or group.tid is None:
                fast = False
                break
            touched = [r for r in before if r.group is group]
            keys = {self._key(lands[r]) for r in touched}
            if len(group.roots) > len(touched):  # untouched roots stay in its subject group
                keys.add(group.subject)
            if len(keys) != 1:
                fast = False
                break
            targets[group] = keys.pop()
        if fast:
            events, changed = self._merge(entry, before, with_members, targets)
        else:
            events, changed = self._reassign(entry, before, with_members, old_groups)
        self._index(entry, True)
        return events, changed

    def _reply_joins(
        self, entry: MessageEntry, mid: str, ref_ids: list[str]
    ) -> tuple[list[ThreadRecord], list[MessageEntry]] | None:
        """The commonest message of all, a reply under a message already threaded, in the
        fewest steps; ``None`` (nothing changed) for anything else, which the general path
        takes. It applies when the step can only hang the new message as a leaf under its
        parent: its Message-ID is new, every reference is known, the references past the
        first already have parents (so (1)(B) links nothing), and all of them sit in one tree
        whose settled group stays whole. The parent being a real message, the leaf cannot
        change whose subject names the tree, so the group, its key and its id stay: one
        ``thread.assigned``, exactly what ``add`` then ``_join`` give (the tests hold the two
        to the batch algorithm)."""
        table = self._table
        parent, top = self._up_the_path(ref_ids)
        if parent is None:
            return None
        if top is not None:
            return self._join_leaf(entry, mid, parent, _root(top), ref_ids)
        nodes: list[_Node] = []
        for i, ref in enumerate(ref_ids):
            found = table.get(ref)
            if found is None or (i and found.parent is None):
                return None
            ref_ids[i] = found.mid
            nodes.append(found)
        root = _root(parent)
        if any(_root(node) is not root for node in nodes[:-1]):
            return None
        return self._join_leaf(entry, mid, parent, root, ref_ids)

    def _up_the_path(self, ref_ids: list[str]) -> tuple[_Node | None, _Node | None]:
        """The node of the last reference when it is a real message (else None), and of the
        first when each reference is the parent of the next (else None), read off the parent
        pointers: the usual reply repeats its parent's path. Not by looking every reference up
        (a long conversation's 20 references were 20 hash lookups into a table of every id,
        most of them cache misses): a node reached that way is the table's node for its id,
        since every node is created under its id and the table never replaces one. Each
        element of ``ref_ids`` the walk meets becomes its node's ``mid`` (``_share_ids``)."""
        parent = self._table.get(ref_ids[-1])
        if parent is None or parent.entry is None:
            return None, None
        node = parent
        ref_ids[-1] = parent.mid
        for i in range(len(ref_ids) - 2, -1, -1):
            up = node.parent
            if up is None or up.mid != ref_ids[i]:
                return parent, None
            ref_ids[i] = up.mid
            node = up
        return parent, node

    def _join_leaf(
        self, entry: MessageEntry, mid: str, parent: _Node, root: _Node, ref_ids: list[str]
    ) -> tuple[list[ThreadRecord], list[MessageEntry]] | None:
        """``_reply_joins`` once every reference is known to sit in ``root``'s tree."""
        group = root.group
        if group is None or group.tid is None:
            return None
        key = self._key(root)
        if (group.subject or next(iter(group.roots))) != key:
            return None
        if len(group.roots) > 1 and group.subject != key:
            return None
        if isinstance(key, str) and self._by_subject.get(key, group) is not group:
            return None
        _link(parent, self._place(entry, mid))
        _share_ids(entry, ref_ids)
        group.count += 1
        group.min_seq = min(group.min_seq, entry.seq)
        group.max_obs = max(group.max_obs, entry.observed_ms)
        self.joined += 1
        return self._assigned(entry, group, None, ref_ids)

    def _starts_thread(
        self, entry: MessageEntry, mid: str
    ) -> tuple[list[ThreadRecord], list[MessageEntry]] | None:
        """A message that references nothing, whose Message-ID nothing referenced yet and
        whose base subject no thread has: a new thread of its own, one ``thread.assigned``,
        as ``_merge`` gives it (``None``, nothing changed, for anything else)."""
        subject = base_subject(entry.subject)
        if self.algorithm == "rfc5256" and subject and subject in self._by_subject:
            return None  # it joins that thread by subject: the general path
        node = self._place(entry, mid)
        node.holder = node
        node.subject = subject
        group = self._group_of([node], [entry])
        group.tid = new_thread_id(self.inbox_id, entry.event_id, "0")
        self.started += 1
        return self._assigned(entry, group, entry.thread_id, [])

    def _place(self, entry: MessageEntry, mid: str) -> _Node:
        """A container of its own for a message whose Message-ID is new (the shortcuts)."""
        node = self._new_node(mid)
        node.entry = entry
        self._node_of[entry.event_id] = node
        return node

    def _assigned(
        self, entry: MessageEntry, group: _Group, old: str | None, ref_ids: list[str]
    ) -> tuple[list[ThreadRecord], list[MessageEntry]]:
        """A shortcut's end: the message carries its group's id (``old`` the one it carried,
        as ``_join`` and ``_merge`` pass it), is indexed, and that is announced."""
        assert group.tid is not None
        entry.thread_id = group.tid
        self._index_tid(entry, old)
        self._index(entry, True)
        named = group.as_group([])
        return [assigned_event(self.inbox_id, entry, group.tid, named, self.algorithm)], [entry]

    # --- the fast path: whole groups -------------------------------------------------------

    def _merge(
        self,
        entry: MessageEntry,
        before: dict[_Node, None],
        with_members: dict[_Node, None],
        targets: dict[_Group, object],
    ) -> tuple[list[ThreadRecord], list[MessageEntry]]:
        new_key = self._key(_root(self._node_of[entry.event_id]))
        if len(targets) == 1 and next(iter(targets.values())) == new_key:
            group = next(iter(targets))
            if (group.subject or next(iter(group.roots))) == new_key:  # it keeps its key
                return self._join(entry, group, before, with_members)
        plan: dict[object, list[_Group]] = {k: [] for k in {new_key, *targets.values()}}
        for group, key in targets.items():
            plan[key].append(group)
        # Roots leave their old groups (they come back below while still roots).
        for root in before:
            if root.group is not None:
                del root.group.roots[root]
                root.group = None
        new_roots: dict[object, list[_Node]] = {}
        for root in with_members:
            if root.group is None:
                new_roots.setdefault(self._key(root), []).append(root)

        def first(key: object) -> int:
            seqs = [g.min_seq for g in plan[key]]
            return min([*seqs, entry.seq] if key == new_key else seqs)

        events: list[ThreadRecord] = []
        changed: list[MessageEntry] = [entry]
        used: set[str] = set()
        for key in sorted(plan, key=first):
            pieces = sorted(plan[key], key=lambda g: g.min_seq)
            joins = key == new_key
            old_ids = list(dict.fromkeys(g.tid for g in pieces if g.tid))
            free = [t for t in old_ids if t not in used]
            # no free id: a thread of the new message alone (settled ids never collide)
            tid = free[0] if free else new_thread_id(self.inbox_id, entry.event_id, "0")
            used.add(tid)
            movers: list[MessageEntry] = [entry] if joins else []
            for old_id in old_ids:
                if old_id != tid:
                    movers += [self.entries[e] for e in self._by_tid.get(old_id, ())]
            group = self._combine(key, pieces, new_roots.get(key, []), entry if joins else None)
            group.tid = tid
            if not movers:
                continue
            named = group.as_group([])
            merged = [t for t in free if t != tid]
            if merged:
                events.append(
                    merged_event(self.inbox_id, tid, merged, named, self.algorithm, group.max_obs)
                )
            movers.sort(key=lambda e: e.seq)
            for e in movers:
                old = e.thread_id
                e.thread_id = tid
                self._index_tid(e, old)
                events.append(assigned_event(self.inbox_id, e, tid, named, self.algorithm))
                if e is not entry:
                    changed.append(e)
        return events, changed

    def _join(
        self,
        entry: MessageEntry,
        group: _Group,
        before: dict[_Node, None],
        with_members: dict[_Node, None],
    ) -> tuple[list[ThreadRecord], list[MessageEntry]]:
        """The common case of ``_merge``: the message joins one whole group, which keeps its
        id; one ``thread.assigned``."""
        for root in before:
            if root.parent is not None and root.group is group:  # linked under another tree
                del group.roots[root]
                root.group = None
        added = [r for r in with_members if r.group is None]
        for root in added:
            group.roots[root] = None
            root.group = group
        if group.rep in group.roots:
            group.rep = min([group.rep, *added], key=lambda r: r.order)
        else:
            group.rep = min(group.roots, key=lambda r: r.order)
        group.count += 1
        group.min_seq = min(group.min_seq, entry.seq)
        group.max_obs = max(group.max_obs, entry.observed_ms)
        assert group.tid is not None
        entry.thread_id = group.tid
        self._index_tid(entry, None)
        named = group.as_group([])
        return [assigned_event(self.inbox_id, entry, group.tid, named, self.algorithm)], [entry]

    def _combine(
        self, key: object, pieces: list[_Group], roots: list[_Node], entry: MessageEntry | None
    ) -> _Group:
        """One group from whole old groups (the biggest is reused), new roots and the new
        message."""
        base = max(pieces, key=lambda g: len(g.roots), default=None)
        if base is None:
            assert entry is not None and roots
            return self._group_of(roots, [entry])
        for piece in pieces:
            if piece is base:
                continue
            for root in piece.roots:
                base.roots[root] = None
                root.group = base
            base.count += piece.count
            base.min_seq = min(base.min_seq, piece.min_seq)
            base.max_obs = max(base.max_obs, piece.max_obs)
            if piece.subject and self._by_subject.get(piece.subject) is piece:
                del self._by_subject[piece.subject]
        for root in roots:
            base.roots[root] = None
            root.group = base
        if entry is not None:
            base.count += 1
            base.min_seq = min(base.min_seq, entry.seq)
            base.max_obs = max(base.max_obs, entry.observed_ms)
        if base.rep not in base.roots or any(p.rep not in base.roots for p in pieces):
            base.rep = min(base.roots, key=lambda r: r.order)
        else:
            base.rep = min([p.rep for p in pieces] + roots, key=lambda r: r.order)
        if base.subject != (key if isinstance(key, str) else ""):
            if base.subject and self._by_subject.get(base.subject) is base:
                del self._by_subject[base.subject]
            base.subject = key if isinstance(key, str) else ""
        if base.subject:
            self._by_subject[base.subject] = base
        return base

    # --- the slow path: member by member ---------------------------------------------------

    def _index(self, entry: MessageEntry, add: bool) -> None:
        """Keep the lookups ``_component`` walks in step: an added entry waits to be indexed
        (``_index_pending``); a removed one leaves the queue or the lookups."""
        eid = entry.event_id
        if add:
            self._unindexed[eid] = None
            return
        if self._unindexed.pop(eid, 0) is None:  # queued (the value is None), never indexed
            return
        keys = [(self._by_mid, entry.message_id)]
        keys += [(self._by_ref, r) for r in reference_ids(entry.references, entry.in_reply_to)]
        if subject := self._base_of(entry):
            keys.append((self._by_base, subject))
        for index, key in keys:
            discard_from(index, key, eid)

    def _base_of(self, entry: MessageEntry) -> str:
        return base_subject(entry.subject) if self.algorithm == "rfc5256" else ""

    def _index_pending(self) -> None:
        """Index the entries added since the last walk: by Message-ID, reference, subject."""
        by_mid, by_ref, by_base = self._by_mid, self._by_ref, self._by_base
        for eid in self._unindexed:
            entry = self.entries[eid]
            add_to(by_mid, entry.message_id, eid)
            for ref in reference_ids(entry.references, entry.in_reply_to):
                add_to(by_ref, ref, eid)
            if subject := self._base_of(entry):
                add_to(by_base, subject, eid)
        self._unindexed.clear()

    def _component(self, entry: MessageEntry) -> set[str]:
        """``entry`` and every indexed message whose thread it could change, whole threads
        (the closure ``tests.helpers.component_threads`` re-threads)."""
        self._index_pending()
        empty: set[str] = set()
        seen: set[str] = set()
        todo = [entry]
        while todo:
            e = todo.pop()
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            related = set(self._by_mid.get(e.message_id, empty))
            related |= self._by_ref.get(e.message_id, empty)
            for ref in reference_ids(e.references, e.in_reply_to):
                related |= self._by_mid.get(ref, empty)
                related |= self._by_ref.get(ref, empty)
            if e.thread_id:
                related |= self._by_tid.get(e.thread_id, empty)
            if self.algorithm == "rfc5256" and (subject := base_subject(e.subject)):
                related |= self._by_base.get(subject, empty)
            todo.extend(self.entries[r] for r in related - seen)
        return seen

    def _reassign(
        self,
        entry: MessageEntry,
        before: dict[_Node, None],
        with_members: dict[_Node, None],
        old_groups: dict[_Group, None],
    ) -> tuple[list[ThreadRecord], list[MessageEntry]]:
        """Re-assign every group the message touched, and every group sharing an id or a
        subject with them, member by member (``assign_groups``)."""
        self.reassigned += 1
        # The entries whose threads the message can change: the closure over shared
        # Message-IDs, references, thread ids and base subjects that the component
        # re-threading used, so the ids handed out here are the ones it handed out.
        roots: dict[_Node, None] = dict(with_members)
        roots.update((_root(self._node_of[eid]), None) for eid in self._component(entry))
        involved: dict[_Group, None] = dict(old_groups)
        involved.update((r.group, None) for r in roots if r.group is not None)
        for group in involved:  # whole groups: their roots, dismantled
            roots.update(dict.fromkeys(group.roots))
            for root in group.roots:
                root.group = None
            if group.subject and self._by_subject.get(group.subject) is group:
                del self._by_subject[group.subject]
        members = {r: _members(r) for r in roots if r.parent is None}
        by_key: dict[object, list[_Node]] = {}
        for root in sorted(members, key=lambda r: r.order):
            if members[root]:
                by_key.setdefault(self._key(root), []).append(root)
        fresh: list[tuple[_Group, list[MessageEntry]]] = []
        for key_roots in by_key.values():
            group_members = sorted((e for r in key_roots for e in members[r]), key=lambda e: e.seq)
            fresh.append((self._group_of(key_roots, group_members), group_members))
        fresh.sort(key=lambda pair: pair[1][0].seq)
        before_ids = {e.event_id: e.thread_id for _, ms in fresh for e in ms}
        events = assign_groups(self.inbox_id, [g.as_group(ms) for g, ms in fresh], self.algorithm)
        changed: list[MessageEntry] = []
        for group, group_members in fresh:
            group.tid = group_members[0].thread_id
            for e in group_members:
                if e.thread_id != before_ids[e.event_id] or e is entry:
                    self._index_tid(e, before_ids[e.event_id])
                    changed.append(e)
        return events, changed

"""Keep one folder in Kafka: catch up from its checkpoint, then wait for changes (IDLE/NOOP).

``catch_up`` is the one routine for backfill, resume and every live poll, so all three follow
the same rules:

1. EXAMINE the folder. UIDVALIDITY differs from the checkpoint -> the old UIDs mean nothing:
   emit a ``resync`` status and start the folder from UID 0 (the new event ids differ because
   they include UIDVALIDITY).
2. Changes to messages already in Kafka (UID <= checkpoint): with CONDSTORE,
   ``UID FETCH 1:<last> (...) (CHANGEDSINCE <modseq> [VANISHED])`` gives ``message.flags``
   events and, with QRESYNC, ``message.expunged`` for VANISHED UIDs. Without QRESYNC,
   expunges are found by diffing ``UID SEARCH`` results against the UIDs seen at the
   previous poll of this process (expunges while no process watched are then not reported;
   QRESYNC servers report them too).
3. New messages (UID > checkpoint) in bounded batches (``folder_sync.sync_folder``); the
   checkpoint is written after every batch's acks, with the HIGHESTMODSEQ read in step 1
   (safe: everything fetched after EXAMINE is at least that new).

``wait_for_change`` is the live part. With IDLE it idles for at most ``keepalive_s`` and then
ends IDLE with DONE, which the server must answer within ``read_timeout_s``: that re-issues
IDLE far below the 29-minute limit (RFC 2177) and proves the connection alive, so a peer that
vanished without a FIN is detected within ``keepalive_s + read_timeout_s``. Without IDLE it
sleeps ``poll_interval_s`` and sends NOOP under the same read timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aioimaplib import aioimaplib

from inboxstream.imap.connection import ImapConnection, SelectedFolder
from inboxstream.imap.exceptions import ConnectTimeoutError, ProtocolError
from inboxstream.imap.fetch import FetchedItem, parse_fetch_lines, search_uids
from inboxstream.producers.checkpoints import Checkpoint, CheckpointStore
from inboxstream.producers.folder_sync import FolderProgress, sync_folder
from inboxstream.producers.parse import FetchedMessage, event_id, parse_message
from inboxstream.producers.publish import EventPublisher
from inboxstream.producers.status import StatusReporter
from inboxstream.schemas.models import FolderRole, MessageEvent

log = logging.getLogger(__name__)

#: Called with the inbox id and the folder's progress after each batch of a catch-up.
ProgressCallback = Callable[[str, FolderProgress], Awaitable[None] | None]

CHANGES_ITEMS = "(UID FLAGS MODSEQ RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"
_VANISHED_RE = re.compile(rb"^(?:\* )?VANISHED (?:\(EARLIER\) )?([0-9:,]+)$", re.IGNORECASE)
_ROUTED_VANISHED_RE = re.compile(rb"^(?:VANISHED )?(?:\(EARLIER\) )?([0-9:,]+)$", re.IGNORECASE)
# Untagged responses during IDLE that mean "something changed" (not "* OK Still here").
_CHANGE_RE = re.compile(rb"^(?:\* )?(?:\d+ (?:EXISTS|EXPUNGE|FETCH)|VANISHED)\b", re.IGNORECASE)


@dataclass(frozen=True)
class LiveTimings:
    """Keepalive bounds; see the module docstring for what each one guarantees."""

    keepalive_s: float = 120.0
    read_timeout_s: float = 15.0
    poll_interval_s: float = 30.0

    @property
    def dead_connection_bound_s(self) -> float:
        return self.keepalive_s + self.read_timeout_s


def expand_uid_set(text: str) -> list[int]:
    """``1:3,7`` -> [1, 2, 3, 7]. Pure; ranges may be written high:low (RFC 3501 9)."""
    out: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        lo_s, _, hi_s = part.partition(":")
        lo, hi = int(lo_s), int(hi_s or lo_s)
        if lo > hi:
            lo, hi = hi, lo
        out.extend(range(lo, hi + 1))
    return out


def compress_uid_set(uids: list[int]) -> str:
    """Sorted UIDs -> ``1:3,7``: the shortest IMAP sequence set, so a batch of scattered UIDs
    fits one command line. Inverse of ``expand_uid_set``."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def vanished_uids(lines: list[Any], *, routed: bool = False) -> list[int]:
    """UIDs of ``VANISHED [(EARLIER)] <set>`` responses. ``routed``: aioimaplib already cut
    the ``VANISHED`` word off (lines it routed to a command registered under that name)."""
    pattern = _ROUTED_VANISHED_RE if routed else _VANISHED_RE
    uids: list[int] = []
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        match = pattern.match(bytes(line).strip())
        if match:
            uids += expand_uid_set(match.group(1).decode())
    return uids


def is_change(lines: list[Any]) -> bool:
    return any(
        isinstance(line, bytes | bytearray) and _CHANGE_RE.match(bytes(line)) for line in lines
    )


@dataclass
class FolderWatch:
    """Everything needed to keep one folder of one inbox in Kafka."""

    inbox_id: str
    folder: str
    role: FolderRole
    publisher: EventPublisher
    store: CheckpointStore
    status: StatusReporter
    log_attachments: bool = True
    producer_name: str = ""
    batch_size: int = 200
    on_progress: ProgressCallback | None = None
    # UIDs seen at the previous poll, for expunge detection without QRESYNC.
    known_uids: array[int] | None = field(default=None, init=False)
    caught_up: bool = field(default=False, init=False)

    async def catch_up(self, conn: ImapConnection) -> int:
        """One pass of steps 1-3 of the module docstring; returns new messages published."""
        selected = await conn.select(self.folder)
        cp = self.store.get(self.inbox_id, self.folder)
        if cp is not None and cp.uidvalidity != selected.uidvalidity:
            await self.status.emit(
                "resync",
                folder=self.folder,
                reason=(
                    f"UIDVALIDITY of {self.folder!r} changed from {cp.uidvalidity} to "
                    f"{selected.uidvalidity}: the server renumbered the folder, reading it "
                    "again from the start"
                ),
            )
            cp = None
            self.known_uids = None
        qresync = "QRESYNC" in conn.enabled  # ENABLEd by ImapConnection.open when offered
        if cp is not None and cp.last_uid > 0:
            if (
                cp.highestmodseq is not None
                and selected.highestmodseq is not None
                and selected.highestmodseq > cp.highestmodseq
            ):
                await self._publish_changes(conn, selected, cp, qresync=qresync)
        after = cp.last_uid if cp is not None else 0
        modseq = selected.highestmodseq

        # the known UID set stays as stored while new messages move last_uid on (UIDs past
        # the old last_uid are new, never "gone"); _diff_expunges replaces it
        known = None if cp is None or qresync else cp.known_uids

        async def checkpoint(sel: SelectedFolder, last_uid: int) -> None:
            await self.store.save(
                Checkpoint(self.inbox_id, self.folder, sel.uidvalidity, last_uid, modseq, known)
            )

        # Messages already in Kafka, for "n of m" on resume: an estimate (UIDs may be sparse).
        after_count = min(after, selected.exists) if after else 0

        async def progress(p: FolderProgress) -> None:
            p = FolderProgress(p.folder, min(p.done + after_count, p.total), p.total, p.last_uid)
            if not self.caught_up:
                await self.status.progress(p.folder, p.done, p.total)
            if self.on_progress is not None:
                maybe = self.on_progress(self.inbox_id, p)
                if maybe is not None:
                    await maybe

        result = await sync_folder(
            conn,
            self.publisher,
            inbox_id=self.inbox_id,
            folder=self.folder,
            role=self.role,
            after_uid=after,
            batch_size=self.batch_size,
            log_attachments=self.log_attachments,
            producer_name=self.producer_name,
            on_progress=progress,
            selected=selected,
            on_acked=checkpoint,
        )
        moved = cp is None or (modseq is not None and modseq != cp.highestmodseq)
        if result.published == 0 and moved:
            # Nothing new, but the UIDVALIDITY or MODSEQ mark moved: record it.
            await checkpoint(selected, result.last_uid)
        if not qresync:
            await self._diff_expunges(conn, selected, result.last_uid, modseq, known)
        if not self.caught_up:
            self.caught_up = True
            await self.status.progress(self.folder, selected.exists, selected.exists, final=True)
        return result.published

    async def settle(self, conn: ImapConnection) -> None:
        """Catch up until nothing is pending, right before IDLE.

        A change that happens while one of our commands runs is announced in that command's
        response (which aioimaplib drops for FETCH/SEARCH), and the server will not repeat it
        in IDLE. So after each pass we ask the server directly whether anything past the
        checkpoint exists: ``UID FETCH 1:* (UID) (CHANGEDSINCE <modseq>)`` with CONDSTORE
        (new mail and flag changes), else ``UID FETCH <last+1>:* (UID)`` (new mail).
        """
        await self.catch_up(conn)
        for _ in range(20):  # a mailbox changing faster than we read it waits for the keepalive
            if not await self._pending(conn):
                return
            await self.catch_up(conn)

    async def _pending(self, conn: ImapConnection) -> bool:
        cp = self.store.get(self.inbox_id, self.folder)
        last = cp.last_uid if cp is not None else 0
        if cp is not None and cp.highestmodseq is not None and conn.has("CONDSTORE"):
            response = await conn.uid_fetch("1:*", f"(UID) (CHANGEDSINCE {cp.highestmodseq})")
            return bool(parse_fetch_lines(response.lines))
        response = await conn.uid_fetch(f"{last + 1}:*", "(UID)")
        # "n:*" always matches the highest UID, even when it is below n (RFC 3501 6.4.8).
        return any(item.uid > last for item in parse_fetch_lines(response.lines))

    async def _publish_changes(
        self, conn: ImapConnection, selected: SelectedFolder, cp: Checkpoint, *, qresync: bool
    ) -> None:
        """Flag changes (and VANISHED UIDs) since the checkpoint's MODSEQ.

        First only ``(UID FLAGS MODSEQ)`` of the changed messages - a few dozen bytes each, so
        even "mark all 100,000 as read" stays small - then their headers in bounded batches.
        """
        modifier = f"(CHANGEDSINCE {cp.highestmodseq}{' VANISHED' if qresync else ''})"
        # aioimaplib routes untagged lines by name and drops "* VANISHED": park a collector
        # under that name while our FETCH runs (it is never sent, so never completes).
        protocol = conn.protocol
        collector = aioimaplib.Command("VANISHED", "vanished-collector", loop=protocol.loop)
        protocol.pending_async_commands["VANISHED"] = collector
        try:
            response = await conn.uid_fetch(f"1:{cp.last_uid}", f"(UID FLAGS MODSEQ) {modifier}")
        finally:
            if protocol.pending_async_commands.get("VANISHED") is collector:
                del protocol.pending_async_commands["VANISHED"]
        # UIDs above the checkpoint are new messages: step 3 publishes them in full.
        changed = sorted({i.uid for i in parse_fetch_lines(response.lines) if i.uid <= cp.last_uid})
        gone: list[int] = []
        if qresync:
            reported = vanished_uids(collector.response.lines, routed=True)
            reported += vanished_uids(response.lines)
            gone = sorted({u for u in reported if u <= cp.last_uid})
        del response
        for at in range(0, len(changed), self.batch_size):
            chunk = changed[at : at + self.batch_size]
            headers = await conn.uid_fetch(compress_uid_set(chunk), CHANGES_ITEMS)
            acks = []
            for item in parse_fetch_lines(headers.lines):
                if item.uid > cp.last_uid:
                    continue
                acks.append(
                    await self.publisher.send(self._flags_event(selected, item), self.inbox_id)
                )
            await asyncio.gather(*acks)
        await asyncio.gather(*await self._publish_expunged(selected, gone))

    def _flags_event(self, selected: SelectedFolder, item: FetchedItem) -> MessageEvent:
        """The message's envelope with its new flags; event_id includes the MODSEQ, so each
        change is its own event and a re-sent change keeps its id."""
        message, _ = parse_message(
            FetchedMessage.from_item(
                item,
                inbox_id=self.inbox_id,
                folder=self.folder,
                folder_role=self.role,
                uidvalidity=selected.uidvalidity,
            ),
            log_attachments=False,
            producer=self.producer_name,
        )
        return message.model_copy(
            update={
                "event_type": "message.flags",
                "event_id": event_id(
                    self.inbox_id,
                    self.folder,
                    selected.uidvalidity,
                    item.uid,
                    "message.flags",
                    item.modseq,
                ),
            }
        )

    async def _publish_expunged(
        self, selected: SelectedFolder, uids: list[int]
    ) -> list[asyncio.Future[object]]:
        acks = []
        for uid in uids:
            event = expunged_event(
                self.inbox_id, self.folder, self.role, selected.uidvalidity, uid, self.producer_name
            )
            acks.append(await self.publisher.send(event, self.inbox_id))
        return acks

    async def _diff_expunges(
        self,
        conn: ImapConnection,
        selected: SelectedFolder,
        last_uid: int,
        modseq: int | None,
        stored: str | None,
    ) -> None:
        """Expunges without QRESYNC: UIDs seen last time that the server no longer lists.

        "Last time" is the previous check of this process or, after a start, the UID set the
        checkpoint kept (``known_uids``): expunges made while no producer ran are reported
        too. The new set is checkpointed once its expunge events are acked, and only when it
        changed."""
        if last_uid == 0:
            self.known_uids = array("q")
            return
        response = await asyncio.wait_for(
            conn.protocol.search("UID", f"1:{last_uid}", charset=None, by_uid=True),
            conn.endpoint.timeout,
        )
        if response.result != "OK":
            raise ProtocolError(f"UID SEARCH in {self.folder!r} failed")
        now = array("q", sorted(u for u in search_uids(response.lines[:-1]) if u <= last_uid))
        if self.known_uids is None and stored is not None:
            self.known_uids = array("q", expand_uid_set(stored))
        if self.known_uids is not None:
            gone = sorted(set(self.known_uids) - set(now))
            if gone:
                await asyncio.gather(*await self._publish_expunged(selected, gone))
        self.known_uids = now
        ranges: str | None = compress_uid_set(list(now)) if now else ""
        if ranges is not None and len(ranges) > MAX_KNOWN_UIDS_CHARS:
            log.warning(
                "%s: %s has too fragmented a UID set to checkpoint (%d characters); expunges "
                "while no producer runs will not be reported for it",
                self.inbox_id,
                self.folder,
                len(ranges),
            )
            ranges = None
        if ranges != stored:
            await self.store.save(
                Checkpoint(
                    self.inbox_id, self.folder, selected.uidvalidity, last_uid, modseq, ranges
                )
            )


#: The longest known-UID set kept in a checkpoint (a record stays far under Kafka's 1 MiB).
MAX_KNOWN_UIDS_CHARS = 256 * 1024


def expunged_event(
    inbox_id: str, folder: str, role: FolderRole, uidvalidity: int, uid: int, producer: str
) -> MessageEvent:
    """The message is gone, so only its identity is known: (folder, UIDVALIDITY, UID) - the
    same fields its ``message.new`` event_id was made from. Message-ID stays empty."""
    return MessageEvent(
        event_id=event_id(inbox_id, folder, uidvalidity, uid, "message.expunged"),
        event_type="message.expunged",
        inbox_id=inbox_id,
        folder=folder,
        folder_role=role,
        uidvalidity=uidvalidity,
        uid=uid,
        message_id="",
        size=0,
        raw_headers=b"",
        observed_at=datetime.now(UTC),
        producer=producer,
    )


async def wait_for_change(conn: ImapConnection, timings: LiveTimings) -> bool:
    """Block until the server reports a change or the keepalive is due; True on a change.

    Raises ``ConnectTimeoutError`` when the server does not answer DONE/NOOP in time (a dead
    connection) and ``ProtocolError`` when it closed the connection.
    """
    protocol = conn.protocol
    if not conn.has("IDLE"):
        await asyncio.sleep(timings.poll_interval_s)
        await _bounded(protocol.simple_command("NOOP"), timings.read_timeout_s, "NOOP", conn)
        return True  # no push without IDLE: every poll looks for changes
    while not protocol.idle_queue.empty():
        protocol.idle_queue.get_nowait()  # pushes from an earlier IDLE were already handled
    idle = asyncio.ensure_future(protocol.idle())
    ack = asyncio.ensure_future(protocol.wait_for_idle_response())
    closed = asyncio.ensure_future(protocol.closed.wait())
    try:
        await asyncio.wait(
            {idle, ack, closed}, timeout=timings.read_timeout_s, return_when="FIRST_COMPLETED"
        )
        if closed.done():
            raise ProtocolError(f"{conn.where} closed the connection")
        if not ack.done():
            if idle.done():
                raise ProtocolError(f"{conn.where} refused IDLE: {idle.result().result}")
            raise ConnectTimeoutError(f"{conn.where} did not acknowledge IDLE in time")
        changed = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timings.keepalive_s
        while (remaining := deadline - loop.time()) > 0:
            push = asyncio.ensure_future(protocol.idle_queue.get())
            done, _ = await asyncio.wait(
                {push, closed}, timeout=remaining, return_when="FIRST_COMPLETED"
            )
            if push not in done:
                push.cancel()
                break
            if is_change(push.result()):
                changed = True
                break
        if closed.done():
            raise ProtocolError(f"{conn.where} closed the connection")
        protocol.idle_done()
        await _bounded(idle, timings.read_timeout_s, "IDLE/DONE", conn)
        return changed
    finally:
        for task in (idle, ack, closed):
            if not task.done():
                task.cancel()


async def _bounded(aw: Awaitable[Any], timeout: float, what: str, conn: ImapConnection) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise ConnectTimeoutError(
            f"{conn.where} did not answer {what} within {timeout:.0f}s: connection presumed dead"
        ) from None

"""Copy one folder's messages into Kafka, in bounded UID-range batches.

Memory stays flat however large the folder: we walk UID ranges of ``batch_size`` from a start
UID up to UIDNEXT instead of listing every UID first, hold one batch at a time, and wait for
Kafka's acks before moving the high-water mark on. ``on_acked`` is called after each batch's
acks with the folder and the new high-water mark: that is where the service writes its
checkpoint, so a checkpoint never runs ahead of Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from producers.fetch import BACKFILL_BATCH, parse_fetch_lines
from producers.imap import ImapConnection, SelectedFolder
from producers.parse import FetchedMessage, parse_message
from producers.publish import EventPublisher
from schemas.exceptions import EncodeError
from schemas.models import FolderRole, MessageEvent

log = logging.getLogger(__name__)

FETCH_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
FETCH_ITEMS_CONDSTORE = "(UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ BODY.PEEK[])"


@dataclass(frozen=True)
class FolderProgress:
    folder: str
    done: int
    total: int
    last_uid: int


@dataclass(frozen=True)
class SyncResult:
    folder: SelectedFolder
    published: int
    last_uid: int


async def sync_folder(
    conn: ImapConnection,
    publisher: EventPublisher,
    *,
    inbox_id: str,
    folder: str,
    role: FolderRole,
    after_uid: int = 0,
    batch_size: int = BACKFILL_BATCH,
    log_attachments: bool = True,
    producer_name: str = "",
    on_progress: Callable[[FolderProgress], Awaitable[None] | None] | None = None,
    selected: SelectedFolder | None = None,
    on_acked: Callable[[SelectedFolder, int], Awaitable[None]] | None = None,
) -> SyncResult:
    """Publish every message with UID > after_uid; return the highest UID acked by Kafka.

    Pass ``selected`` when the caller has just selected the folder (it read UIDVALIDITY to
    check its checkpoint); otherwise the folder is selected here.
    """
    if selected is None:
        selected = await conn.select(folder)
    items = FETCH_ITEMS_CONDSTORE if conn.has("CONDSTORE") else FETCH_ITEMS
    last_uid = after_uid
    published = 0
    lo = after_uid + 1
    # The next range is fetched while this one is parsed and published, so the server works
    # while we do (bench/backfill.py: +15-30% messages/s); at most two batches are held. After
    # an error a pending read-ahead just completes (or fails with the connection) unobserved.
    ahead: asyncio.Future[Any] | None = None
    # UIDNEXT may be absent on old servers: then fetch lo:* once per batch until empty.
    while selected.uidnext == 0 or lo < selected.uidnext:
        hi = lo + batch_size - 1
        uid_set = f"{lo}:{hi}" if selected.uidnext else f"{lo}:*"
        response = await (ahead if ahead is not None else conn.uid_fetch(uid_set, items))
        ahead = None
        if selected.uidnext and hi + 1 < selected.uidnext:
            ahead = asyncio.ensure_future(conn.uid_fetch(f"{hi + 1}:{hi + batch_size}", items))
            ahead.add_done_callback(_consume_error)
        fetched = [f for f in parse_fetch_lines(response.lines) if f.uid >= lo]
        acks = []
        for item in fetched:
            message, body = parse_message(
                FetchedMessage.from_item(
                    item,
                    inbox_id=inbox_id,
                    folder=folder,
                    folder_role=role,
                    uidvalidity=selected.uidvalidity,
                ),
                log_attachments=log_attachments,
                producer=producer_name,
            )
            try:
                acks.append(await publisher.send(message, inbox_id))
                acks.append(await publisher.send(body, inbox_id))
            except EncodeError as exc:
                # parse_message never raises, but one unencodable field must not wedge the
                # folder (every retry would hit it again): publish the message's identity
                # with the reason instead, and move on.
                log.warning("%s %s UID %d: %s", inbox_id, folder, item.uid, exc)
                acks.append(await publisher.send(identity_only(message, exc), inbox_id))
        await asyncio.gather(*acks)  # the checkpoint may move only past acked events
        if fetched:
            last_uid = max(last_uid, max(f.uid for f in fetched))
            published += len(fetched)
            if on_acked is not None:
                await on_acked(selected, last_uid)
        if on_progress is not None:
            maybe = on_progress(FolderProgress(folder, published, selected.exists, last_uid))
            if maybe is not None:
                await maybe
        if not selected.uidnext and not fetched:
            break
        lo = hi + 1
    return SyncResult(selected, published, last_uid)


def _consume_error(future: asyncio.Future[Any]) -> None:
    """A read-ahead left behind by an error: its own failure is expected and not news."""
    if not future.cancelled():
        future.exception()


def identity_only(message: MessageEvent, exc: Exception) -> MessageEvent:
    """The fields that identify a message (all ASCII or numbers), plus why the rest is missing."""
    safe_id = message.message_id.encode("ascii", "replace").decode()
    return MessageEvent(
        event_id=message.event_id,
        event_type=message.event_type,
        inbox_id=message.inbox_id,
        folder=message.folder,
        folder_role=message.folder_role,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        modseq=message.modseq,
        message_id=safe_id,
        message_id_synthetic=message.message_id_synthetic,
        size=message.size,
        raw_headers=b"",
        parse_error=f"event could not be encoded, fields dropped: {exc}"[:1000],
        observed_at=message.observed_at,
        producer=message.producer,
    )

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
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inboxstream.core.metrics import BATCH_RECORDS, BATCH_SECONDS, INBOX_MESSAGES
from inboxstream.imap.connection import ImapConnection, SelectedFolder
from inboxstream.imap.fetch import BACKFILL_BATCH, FetchedItem, parse_fetch_lines
from inboxstream.producers.encode import EncodedMessage
from inboxstream.producers.parse import FetchedMessage
from inboxstream.producers.publish import EventPublisher
from inboxstream.schemas.models import FolderRole

log = logging.getLogger(__name__)

FETCH_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
#: Batches handed to the parse pool ahead of the one being published. With one, the workers sat
#: idle while the event loop awaited a batch's acks and read the next: bench/backfill.py
#: measured ~53% busy workers at one, and the figures beside BACKFILL_BATCH at two.
PARSE_AHEAD = 2
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
    check its checkpoint); otherwise the folder is selected here. Messages are parsed and
    encoded in the publisher's parse pool (inline or worker processes).
    """
    pool = publisher.parse_pool
    key = inbox_id.encode()
    if selected is None:
        selected = await conn.select(folder)
    items = FETCH_ITEMS_CONDSTORE if conn.has("CONDSTORE") else FETCH_ITEMS
    if conn.has("X-GM-EXT-1"):  # Gmail: one id per message across its labels, and the labels
        items = items.replace("UID ", "UID X-GM-MSGID X-GM-LABELS ", 1)
    last_uid = after_uid
    published = 0
    lo = after_uid + 1
    # A pipeline, so the server, the parse workers and Kafka all work at once: while batch k is
    # published and its acks awaited, batches k+1 and k+2 are parsed (producers/parse_pool.py;
    # two queued, so the workers never wait for the event loop between batches) and batch k+3
    # is read ahead from the server. At most four batches are held, so memory stays bounded;
    # acks are still awaited batch by batch, in order, before each checkpoint.
    # After an error a pending read-ahead or parse just completes (or fails) unobserved.
    ahead: asyncio.Future[Any] | None = None
    pending: deque[tuple[list[FetchedItem], asyncio.Future[list[EncodedMessage]], float]] = deque()

    async def publish(
        fetched: list[FetchedItem], encoding: asyncio.Future[list[EncodedMessage]], since: float
    ) -> None:
        nonlocal last_uid, published
        encoded = await encoding
        acks = await publisher.send_encoded(
            (record for message in encoded for record in message.records), key
        )
        await asyncio.gather(*acks)  # the checkpoint may move only past acked events
        if fetched:
            last_uid = max(last_uid, max(f.uid for f in fetched))
            published += len(fetched)
            INBOX_MESSAGES.labels(inbox_id).inc(len(fetched))
            BATCH_RECORDS.labels("producer").observe(len(fetched))
            # from the FETCH answer to Kafka's acks: parse, encode, send, replicate
            BATCH_SECONDS.labels("producer").observe(time.perf_counter() - since)
            if on_acked is not None:
                await on_acked(selected, last_uid)
        if on_progress is not None:
            maybe = on_progress(FolderProgress(folder, published, selected.exists, last_uid))
            if maybe is not None:
                await maybe

    try:
        # UIDNEXT may be absent on old servers: then fetch lo:* once per batch until empty.
        while selected.uidnext == 0 or lo < selected.uidnext:
            hi = lo + batch_size - 1
            uid_set = f"{lo}:{hi}" if selected.uidnext else f"{lo}:*"
            response = await (ahead if ahead is not None else conn.uid_fetch(uid_set, items))
            ahead = None
            if selected.uidnext and hi + 1 < selected.uidnext:
                ahead = asyncio.ensure_future(conn.uid_fetch(f"{hi + 1}:{hi + batch_size}", items))
                ahead.add_done_callback(_consume_error)
            since = time.perf_counter()
            fetched = [f for f in parse_fetch_lines(response.lines) if f.uid >= lo]
            encoding = asyncio.ensure_future(
                pool.encode(
                    [
                        FetchedMessage.from_item(
                            item,
                            inbox_id=inbox_id,
                            folder=folder,
                            folder_role=role,
                            uidvalidity=selected.uidvalidity,
                        )
                        for item in fetched
                    ],
                    log_attachments=log_attachments,
                    producer=producer_name,
                )
            )
            pending.append((fetched, encoding, since))
            if len(pending) > PARSE_AHEAD:
                await publish(*pending.popleft())
            if not selected.uidnext and not fetched:
                break
            lo = hi + 1
        while pending:
            await publish(*pending.popleft())
    finally:
        for _, left, _ in pending:
            if not left.done():
                left.add_done_callback(_consume_error)
                left.cancel()
    return SyncResult(selected, published, last_uid)


def _consume_error(future: asyncio.Future[Any]) -> None:
    """A read-ahead left behind by an error: its own failure is expected and not news."""
    if not future.cancelled():
        future.exception()

"""The producer service: one asyncio process keeping many inboxes in Kafka.

Per inbox (``InboxWorker``), every connection is taken through the shared ``BudgetRegistry``
(imap/budget.py), so together with a ``MailSender`` in the same process an inbox never
has more than five connections:

* "inbox" slot: INBOX, backfill from its checkpoint, then IDLE (or NOOP polling);
* "sent" slot: the sent folder, the same way (absent when the mailbox has none);
* "other" slot: one connection per round through every other folder, every
  ``other_folders_interval_s``, closed between rounds (absent when there are no other
  folders): an idle inbox holds two connections, not three.

The INBOX connection logs in first; the other two start only after it succeeded, so a wrong
password costs one login attempt, not three. Every set-up (connect to LOGIN) goes through the
process's ``ConnectGate`` (imap/gate.py): a bounded number at once, INBOX connections first,
each inbox's first one after a random jitter, so a cold start with thousands of inboxes is
a queue, not a storm; a timeout (a slow server) is retried within ``slow_retry_max_s``.
A non-retriable error (auth, TLS, unsupported server) stops the whole inbox with a
``disconnected`` status until its registry entry changes; anything else reconnects that one
connection with full-jitter exponential backoff.
Each inbox runs in its own task and catches its own errors, so one bad inbox never stalls
the others.

``ProducerService`` reconciles the running workers with the registry every
``registry_poll_s``: new inboxes start, removed ones stop, changed ones restart. The registry
is a folder (producers/registry.py: one process syncs every inbox in it) or, with
``producer.registry = "topic"``, the fleet's registry topic, of which this process syncs the
inboxes its lease holds (producers/fleet.py): a revoked share is stopped before the process
rejoins the group, so no inbox is ever synced by two processes at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Literal

from inboxstream.core.gc_tuning import tune_for_streaming
from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.lifetime import raise_open_files_limit
from inboxstream.core.metrics import ERRORS, error_kind, forget_inbox
from inboxstream.core.oauth import TokenSources
from inboxstream.core.settings import InboxSettings, ProducerSettings, Settings
from inboxstream.core.vault import SecretBox
from inboxstream.errors import InboxstreamError
from inboxstream.imap.budget import BudgetRegistry, ConnectionRole
from inboxstream.imap.connection import ImapConnection, endpoint_for_inbox
from inboxstream.imap.exceptions import ConnectTimeoutError, ProtocolError
from inboxstream.imap.folders import assign_roles
from inboxstream.imap.gate import ConnectGate
from inboxstream.producers.checkpoints import CheckpointStore, default_owner
from inboxstream.producers.fleet import InboxLeases
from inboxstream.producers.live import FolderWatch, LiveTimings, ProgressCallback, wait_for_change
from inboxstream.producers.parse_pool import ParsePool
from inboxstream.producers.publish import EventPublisher
from inboxstream.producers.registry import InboxRegistry, inbox_fingerprint
from inboxstream.producers.status import StatusReporter
from inboxstream.producers.token_store import refresh_token_store
from inboxstream.schemas.models import FolderRole

log = logging.getLogger(__name__)

#: How a role's run on one connection ended (``InboxWorker._run_role``); live roles never end.
RoleEnd = Literal["done", "rest"]

_ROLE_TEXT: dict[ConnectionRole, str] = {
    "inbox": "INBOX connection",
    "sent": "sent-folder connection",
    "other": "other-folders connection",
    "send": "sending connection",
}


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(max, initial * 2**attempt)].

    Spreads reconnects of many inboxes after a server outage instead of synchronising them.
    """
    return rng.uniform(0, min(maximum, initial * 2 ** min(attempt, 30)))


async def cancel_and_wait(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel and wait until every task is done, cancelling again while one is not.

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that races with its inner
    future completing (gh-86296); under load that happens, and a worker would live on after
    its inbox was removed. Re-cancelling makes stopping reliable.

    A cancellation of the caller itself (a worker being stopped while it stops its own role
    tasks) must not cut this short either, or a role task would outlive its worker and run on
    after the Kafka producer closed: finish stopping the tasks, then re-raise it.
    """
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=1.0)
        except asyncio.CancelledError:
            interrupted = True
            pending = {t for t in pending if not t.done()}
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("task %s ended with %r", task.get_name(), task.exception())
    if interrupted:
        raise asyncio.CancelledError


def _stops_inbox(exc: BaseException) -> bool:
    """Only our own non-retriable errors stop an inbox; Kafka hiccups and bugs reconnect."""
    return isinstance(exc, InboxstreamError) and not exc.retriable


@dataclass
class InboxWorker:
    """Keeps one inbox in Kafka until cancelled or stopped by a non-retriable error."""

    inbox: InboxSettings
    config: ProducerSettings
    publisher: EventPublisher
    store: CheckpointStore
    budgets: BudgetRegistry
    gate: ConnectGate
    producer_name: str = ""
    on_progress: ProgressCallback | None = None
    rng: random.Random = field(default_factory=random.Random)
    #: OAuth2 access tokens (core/oauth.py), shared by the inbox's connections.
    tokens: TokenSources = field(default_factory=TokenSources)
    status: StatusReporter = field(init=False)
    #: Why the worker stopped for good (auth, TLS...), or None while it runs.
    stopped: str | None = field(default=None, init=False)
    connects: int = field(default=0, init=False)
    _watches: dict[str, FolderWatch] = field(default_factory=dict, init=False)
    _logged_in: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _other_announced: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.status = StatusReporter(
            self.publisher,
            self.inbox.id,
            f"{self.inbox.imap_host}:{self.inbox.imap_port}",
            producer=self.producer_name,
        )

    @property
    def timings(self) -> LiveTimings:
        return LiveTimings(
            self.config.keepalive_s, self.config.read_timeout_s, self.config.poll_interval_s
        )

    async def run(self) -> None:
        try:
            await self._run_roles()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - only non-retriable errors get here
            self.stopped = str(exc)
            log.warning(
                "%s: stopped until its settings change: %s",
                self.inbox.id,
                exc,
                extra={"inbox": self.inbox.id},
            )
            await self.status.emit("disconnected", error=exc)

    async def _run_roles(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        if self.config.connect_jitter_s:
            await asyncio.sleep(self.rng.uniform(0, self.config.connect_jitter_s))
        try:
            inbox_task = asyncio.create_task(self._role_loop("inbox"))
            tasks.add(inbox_task)
            logged_in = asyncio.create_task(self._logged_in.wait())
            try:
                await asyncio.wait({inbox_task, logged_in}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                logged_in.cancel()
            if not inbox_task.done():
                tasks.add(asyncio.create_task(self._role_loop("sent")))
                tasks.add(asyncio.create_task(self._role_loop("other")))
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                tasks -= done
                for task in done:
                    task.result()  # re-raises the stopping error
        finally:
            await cancel_and_wait(tasks)

    async def _role_loop(self, role: ConnectionRole) -> None:
        """Connect, run the role, reconnect with backoff on retriable errors."""
        budget = self.budgets.for_inbox(self.inbox.id)
        attempt = 0
        announce = True  # "connected" after the first connect and after every failure
        while True:
            try:
                async with budget.hold(role):
                    async with self.gate.slot(role):
                        conn = await ImapConnection.open(
                            endpoint_for_inbox(self.inbox),
                            self.inbox.username,
                            self.tokens.credentials(self.inbox),
                        )
                    self.connects += 1
                    try:
                        attempt = 0
                        self._logged_in.set()
                        if announce:
                            announce = False
                            await self.status.emit("connected", reason=_ROLE_TEXT[role])
                        done = await self._run_role(role, conn)
                    except BaseException:
                        # Cancelled (stop/remove) or failed, possibly mid-IDLE or on a dead
                        # socket: a polite LOGOUT could wait for the IDLE to end. Just close.
                        conn.abort()
                        raise
                    await conn.logout()
                if done == "done":
                    return
                # a round of the other folders: no connection held until the next one
                await asyncio.sleep(self.config.other_folders_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ERRORS.labels("producer", error_kind(exc)).inc()
                if _stops_inbox(exc):
                    raise
                longest = self.config.backoff_max_s
                if isinstance(exc, ConnectTimeoutError):
                    # A slow answer (a login storm, a busy server) is waited out, not punished:
                    # the retry comes within slow_retry_max_s, never minutes later.
                    longest = min(longest, self.config.slow_retry_max_s)
                delay = backoff_delay(attempt, self.config.backoff_initial_s, longest, self.rng)
                attempt += 1
                log.warning(
                    "%s (%s): %s: %s; reconnecting in %.1fs",
                    self.inbox.id,
                    role,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"inbox": self.inbox.id},
                )
                await self.status.emit(
                    "disconnected", reason=f"{_ROLE_TEXT[role]}: {exc}"[:500], error=exc
                )
                announce = True
                await asyncio.sleep(delay)

    async def _run_role(self, role: ConnectionRole, conn: ImapConnection) -> RoleEnd:
        """Run one role on a fresh connection: the live roles (INBOX, sent) never end by
        themselves; "done" when the role has nothing to do, "rest" after a round of the other
        folders."""
        roles = assign_roles(await conn.list_folders())
        if role == "inbox":
            await self._watch_live(conn, "INBOX")
        elif role == "sent":
            sent = [name for name, r in roles.items() if r == "sent"]
            if not sent:
                log.info("%s: no sent folder; the sent connection is not needed", self.inbox.id)
                return "done"
            await self._watch_live(conn, sent[0])
        else:
            if not any(r == "other" for r in roles.values()):
                return "done"
            await self._other_round(conn, roles)
        return "rest"

    def _watch(self, folder: str, role: FolderRole) -> FolderWatch:
        watch = self._watches.get(folder)
        if watch is None:
            watch = self._watches[folder] = FolderWatch(
                inbox_id=self.inbox.id,
                folder=folder,
                role=role,
                publisher=self.publisher,
                store=self.store,
                status=self.status,
                log_attachments=self.inbox.log_attachments,
                producer_name=self.producer_name,
                batch_size=self.config.batch_size,
                on_progress=self.on_progress,
            )
        return watch

    async def _watch_live(self, conn: ImapConnection, folder: str) -> None:
        watch = self._watch(folder, "inbox" if folder.upper() == "INBOX" else "sent")
        first = not watch.caught_up
        await watch.settle(conn)
        if first:
            await self.status.emit("idle", folder=folder)
        while True:
            await wait_for_change(conn, self.timings)
            # Even without a reported change, a keepalive round re-checks cheaply (EXAMINE)
            # so a missed push costs at most one keepalive interval.
            await watch.settle(conn)

    async def _other_round(self, conn: ImapConnection, roles: dict[str, FolderRole]) -> None:
        """One round through every other folder (listed afresh each round: folders come and
        go)."""
        for folder, role in roles.items():
            if role != "other":
                continue
            try:
                await self._watch(folder, "other").catch_up(conn)
            except ProtocolError as exc:
                if conn.protocol.closed.is_set():
                    raise
                # The server said NO for this folder (deleted meanwhile, no rights...):
                # skip it this round instead of stalling every other folder.
                log.warning("%s: skipping folder %r this round: %s", self.inbox.id, folder, exc)
        if not self._other_announced:
            self._other_announced = True
            await self.status.emit("idle", folder="(other folders)")


@dataclass
class _Running:
    worker: InboxWorker
    task: asyncio.Task[None]
    fingerprint: str


@dataclass
class ProducerService:
    """Many inboxes in one process; see the module docstring."""

    settings: Settings
    registry: InboxRegistry | None = None
    budgets: BudgetRegistry = field(default_factory=BudgetRegistry)
    on_progress: ProgressCallback | None = None
    gate: ConnectGate | None = None  # default: one of settings.producer.connect_concurrency
    #: The fleet lease (topic registry mode); made by ``run`` when the settings ask for it.
    leases: InboxLeases | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    producer_name: str = field(default_factory=default_owner)
    workers: dict[str, _Running] = field(default_factory=dict, init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    store: CheckpointStore | None = field(default=None, init=False)
    publisher: EventPublisher | None = field(default=None, init=False)
    tokens: TokenSources = field(init=False)

    def __post_init__(self) -> None:
        if self.gate is None:
            self.gate = ConnectGate(self.settings.producer.connect_concurrency)
        self.tokens = TokenSources(on_rotate=refresh_token_store(self.settings))

    def desired(self) -> dict[str, InboxSettings]:
        if self.leases is not None:  # a fleet member syncs its lease, nothing else
            return self.leases.owned()
        inboxes = {i.id: i for i in self.settings.inboxes}
        if self.registry is not None:
            inboxes |= self.registry.load()
        return inboxes

    async def run(self, stop: asyncio.Event) -> None:
        tune_for_streaming()
        raise_open_files_limit()  # two sockets per idle inbox: thousands for a big share
        await ensure_topics(self.settings.kafka, self.settings.topics)
        producer = make_producer(self.settings.kafka)  # the schema ids the workers take along
        await producer.start()
        parse_pool = ParsePool(self.settings.producer.parse_workers)
        # the workers start while the checkpoints and IMAP are set up: the first FETCH batch
        # does not wait for them
        pool_started = asyncio.create_task(parse_pool.start())
        self.publisher = EventPublisher(producer, self.settings.topics, parse_pool)
        self.store = CheckpointStore(
            self.settings.kafka,
            self.settings.topics.checkpoints.name,
            producer,
            owner=self.producer_name,
        )
        try:
            await self.store.start()
            if self.settings.producer.registry == "topic":
                if self.settings.inboxes:
                    log.warning(
                        "producer.registry is 'topic': the %d [[inboxes]] of the config file "
                        "are not synced by a fleet member; add them with 'inbox add'",
                        len(self.settings.inboxes),
                    )
                self.leases = InboxLeases(
                    self.settings,
                    SecretBox.default(self.settings.producer.secret_key_file),
                    on_revoked=self._release,
                )
                await self.leases.start()
            self.ready.set()
            while not stop.is_set():
                async with self._lock:
                    await self.reconcile(self.desired())
                await self._wait_for_change(stop)
        finally:
            async with self._lock:
                await self._stop_workers(set(self.workers), "the producer service is shutting down")
            if self.leases is not None:
                await self.leases.stop()  # after the inboxes stopped: then the others start
            await self.store.stop()
            await producer.stop()
            await asyncio.gather(pool_started, return_exceptions=True)
            self.publisher.parse_pool.close()

    async def _wait_for_change(self, stop: asyncio.Event) -> None:
        """Until stopped, the lease changed, or ``registry_poll_s`` passed."""
        waits = [asyncio.create_task(stop.wait())]
        if self.leases is not None:
            self.leases.changed.clear()
            waits.append(asyncio.create_task(self.leases.changed.wait()))
        try:
            await asyncio.wait(waits, timeout=self.settings.producer.registry_poll_s)
        finally:
            for task in waits:
                task.cancel()

    async def _release(self, inbox_ids: set[str]) -> None:
        """A rebalance took these inboxes away: stop them all before the process rejoins."""
        async with self._lock:
            await self._stop_workers(
                inbox_ids, "the producer fleet is rebalancing; another process may own it"
            )

    async def reconcile(self, desired: dict[str, InboxSettings]) -> None:
        """Start new inboxes, stop removed ones, restart changed ones."""
        for inbox_id in [i for i in self.workers if i not in desired]:
            await self._stop_worker(inbox_id, "the inbox was removed from this producer")
            self.tokens.forget(inbox_id)
        starting: list[tuple[InboxSettings, str]] = []
        for inbox_id, inbox in desired.items():
            fingerprint = inbox_fingerprint(inbox)
            running = self.workers.get(inbox_id)
            if running is not None and running.fingerprint == fingerprint:
                # A refresh token new to the inbox (a person signed in again) is adopted by the
                # running inbox; one stopped by a refused token starts again with it.
                if self.tokens.offer(inbox) and running.task.done():
                    await self._stop_worker(inbox_id, "a new OAuth2 sign-in; reconnecting")
                    starting.append((inbox, fingerprint))
                continue
            if running is not None:
                await self._stop_worker(inbox_id, "the inbox settings changed; reconnecting")
            starting.append((inbox, fingerprint))
        if starting:
            assert self.store is not None
            await self.store.refresh()  # checkpoints another process wrote (takeover)
        for inbox, fingerprint in starting:
            self._start_worker(inbox, fingerprint)

    def _start_worker(self, inbox: InboxSettings, fingerprint: str) -> None:
        assert self.store is not None and self.publisher is not None and self.gate is not None
        worker = InboxWorker(
            inbox,
            self.settings.producer,
            self.publisher,
            self.store,
            self.budgets,
            self.gate,
            producer_name=self.producer_name,
            on_progress=self.on_progress,
            tokens=self.tokens,
        )
        task = asyncio.create_task(worker.run(), name=f"inbox:{inbox.id}")
        self.workers[inbox.id] = _Running(worker, task, fingerprint)
        log.info("%s: started", inbox.id)

    async def _stop_workers(self, inbox_ids: set[str], reason: str) -> None:
        """Stop these inboxes (those running) side by side, and wait until all are stopped."""
        running = [i for i in inbox_ids if i in self.workers]
        await asyncio.gather(*(self._stop_worker(i, reason) for i in running))

    async def _stop_worker(self, inbox_id: str, reason: str) -> None:
        running = self.workers.pop(inbox_id)
        was_running = not running.task.done()
        await cancel_and_wait({running.task})
        if was_running:
            await running.worker.status.emit("disconnected", reason=reason)
        forget_inbox(inbox_id)  # its series go with it (removed, or leased elsewhere)
        log.info("%s: stopped (%s)", inbox_id, reason)

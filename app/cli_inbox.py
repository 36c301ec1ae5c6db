"""``inboxstream inbox add|remove|list|status|migrate`` and ``inboxstream producer run``.

Inboxes live in the registry directory (producers/registry.py) or, with
``producer.registry = "topic"``, in the fleet's registry topic (producers/registry_topic.py);
a running producer picks up every change within ``producer.registry_poll_s`` (a fleet member:
as soon as the record arrives). Passwords come from ``--password-env``,
``--password-file`` or a hidden prompt, in that order, and are never echoed or logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from inboxstream.core.oauth import TokenSources
from inboxstream.core.ops_server import ops_endpoints
from inboxstream.core.settings import InboxSettings, Settings, describe_validation_error
from inboxstream.core.vault import SecretKeyError
from inboxstream.imap.connection import ImapConnection, endpoint_for_inbox
from inboxstream.imap.exceptions import ImapError
from inboxstream.imap.folders import assign_roles
from inboxstream.producers.checkpoints import CheckpointStore
from inboxstream.producers.folder_sync import FolderProgress
from inboxstream.producers.registry import InboxRegistry, registry_for, with_refresh_token
from inboxstream.producers.registry_topic import TopicRegistry
from inboxstream.producers.service import ProducerService
from inboxstream.producers.status import latest_status

console = Console(stderr=True)


def _out() -> Console:
    """Made per call so the width follows the terminal (or ``COLUMNS``) of this run."""
    return Console()


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]()
    return settings


def _registry(settings: Settings) -> InboxRegistry:
    return registry_for(settings)


class _TopicStore:
    """The registry topic behind the same calls as the folder registry (one command, one
    read or write of the topic)."""

    def __init__(self, settings: Settings) -> None:
        self.topics = TopicRegistry(settings, registry_for(settings).box)
        self.errors: dict[str, str] = {}
        self.partitions: dict[str, int] = {}

    def add(self, inbox: InboxSettings) -> bool:
        return asyncio.run(self.topics.add(inbox))

    def remove(self, inbox_id: str) -> bool:
        return asyncio.run(self.topics.remove(inbox_id))

    def load(self) -> dict[str, InboxSettings]:
        view = asyncio.run(self.topics.read())
        self.errors = dict(view.errors)
        self.partitions = {i: p for i, (p, _) in view.inboxes.items()}
        return {i: inbox for i, (_, inbox) in view.inboxes.items()}


def _store(settings: Settings) -> InboxRegistry | _TopicStore:
    """Where ``inbox add/remove/list`` act: the folder, or the fleet's topic."""
    if settings.producer.registry == "topic":
        return _TopicStore(settings)
    return _registry(settings)


def _where(settings: Settings) -> str:
    if settings.producer.registry == "topic":
        return f"registry topic {settings.topics.registry.name}"
    return str(settings.producer.registry_dir)


def read_password(
    password_env: str | None, password_file: Path | None, what: str = "IMAP password"
) -> str:
    """From an env var, a file (first line) or a hidden prompt; never from the command line,
    where it would land in the shell history and the process list."""
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            raise click.UsageError(f"environment variable {password_env} is not set or empty")
        return value
    if password_file is not None:
        lines = password_file.read_text().splitlines()
        if not lines or not lines[0]:
            raise click.UsageError(f"{password_file} is empty")
        return lines[0]
    prompted: str = click.prompt(what, hide_input=True)
    return prompted


@click.group("inbox")
def inbox() -> None:
    """Connect, disconnect and inspect inboxes (a running producer follows within seconds)."""


@inbox.command("add")
@click.argument("inbox_id")
@click.option("--host", "imap_host", required=True, help="IMAP server host name.")
@click.option("--port", "imap_port", type=int, default=993, show_default=True)
@click.option(
    "--security",
    "imap_security",
    type=click.Choice(["tls", "starttls"]),
    default="tls",
    show_default=True,
)
@click.option("--username", help="Login name (default: the inbox id).")
@click.option("--password-env", metavar="VAR", help="Read the password from this env var.")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the password from the first line of this file.",
)
@click.option(
    "--auth",
    type=click.Choice(["password", "xoauth2", "oauthbearer"]),
    default="password",
    show_default=True,
    help="Sign in with a password, or with OAuth2 (SASL XOAUTH2 / OAUTHBEARER).",
)
@click.option("--oauth-token-url", metavar="URL", help="OAuth2 token endpoint (https).")
@click.option("--oauth-client-id", metavar="ID", help="OAuth2 client (application) id.")
@click.option(
    "--oauth-client-secret-env", metavar="VAR", help="Read the OAuth2 client secret from here."
)
@click.option("--oauth-scope", metavar="SCOPE", help="Scope to ask for with each refresh.")
@click.option(
    "--refresh-token-env", metavar="VAR", help="Read the OAuth2 refresh token from this env var."
)
@click.option(
    "--refresh-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the OAuth2 refresh token from the first line of this file.",
)
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--allow-unverified-certificate", is_flag=True, help="Accept a self-signed cert.")
@click.option("--allow-legacy-tls", is_flag=True, help="Allow TLS 1.0/1.1 for this inbox.")
@click.option("--no-attachments", is_flag=True, help="Do not log attachment metadata.")
@click.option(
    "--verify", is_flag=True, help="Log in once and list the folders before saving the inbox."
)
@click.option("--smtp-host", help="SMTP submission host (default: the IMAP host).")
@click.option("--smtp-port", type=int, default=465, show_default=True)
@click.option(
    "--smtp-security", type=click.Choice(["tls", "starttls"]), default="tls", show_default=True
)
@click.pass_context
def inbox_add(
    ctx: click.Context,
    /,
    inbox_id: str,
    username: str | None,
    password_env: str | None,
    password_file: Path | None,
    auth: str,
    oauth_token_url: str | None,
    oauth_client_id: str | None,
    oauth_client_secret_env: str | None,
    oauth_scope: str | None,
    refresh_token_env: str | None,
    refresh_token_file: Path | None,
    no_attachments: bool,
    verify: bool,
    **options: Any,
) -> None:
    """Add an inbox, or replace its settings (which reconnects it, e.g. after a new password
    or a new OAuth2 sign-in)."""
    secrets: dict[str, Any] = {}
    if auth == "password":
        secrets["password"] = read_password(password_env, password_file)
    else:
        if not (oauth_token_url and oauth_client_id):
            raise click.UsageError(f"--auth {auth} needs --oauth-token-url and --oauth-client-id")
        oauth: dict[str, Any] = {
            "token_url": oauth_token_url,
            "client_id": oauth_client_id,
            "scope": oauth_scope,
            "refresh_token": read_password(
                refresh_token_env, refresh_token_file, "OAuth2 refresh token"
            ),
        }
        if oauth_client_secret_env:
            oauth["client_secret"] = read_password(oauth_client_secret_env, None)
        secrets["oauth"] = oauth
    try:
        settings = InboxSettings(
            id=inbox_id,
            username=username or inbox_id,
            auth=auth,
            log_attachments=not no_attachments,
            **secrets,
            **options,
        )
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from None
    if verify:
        try:
            roles, settings = asyncio.run(_verify(settings))
        except ImapError as exc:  # typed, and never contains the password
            console.print(f"[red]error:[/red] {exc}")
            raise SystemExit(1) from None
        folders = ", ".join(f"{name} ({role})" for name, role in roles.items())
        console.print(f"verified: {folders}")
    try:
        created = _store(_settings(ctx)).add(settings)
    except SecretKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
    what = "password" if auth == "password" else "refresh token"
    console.print(f"{'added' if created else 'updated'} inbox {inbox_id} ({what} encrypted)")


async def _verify(inbox: InboxSettings) -> tuple[dict[str, str], InboxSettings]:
    """The folders' roles, and the inbox to store: with the refresh token the endpoint rotated
    to while signing in, if it did (the one given is then spent)."""
    rotated: list[str] = []

    async def keep(_inbox_id: str, refresh_token: str) -> None:
        rotated.append(refresh_token)

    conn = await ImapConnection.open(
        endpoint_for_inbox(inbox), inbox.username, TokenSources(keep).credentials(inbox)
    )
    try:
        roles: dict[str, str] = dict(assign_roles(await conn.list_folders()))
    finally:
        await conn.logout()
    return roles, with_refresh_token(inbox, rotated[-1]) if rotated else inbox


@inbox.command("remove")
@click.argument("inbox_id")
@click.option(
    "--forget-checkpoints",
    is_flag=True,
    help="Also delete its checkpoints: adding it again re-reads every folder.",
)
@click.pass_context
def inbox_remove(ctx: click.Context, inbox_id: str, forget_checkpoints: bool) -> None:
    """Stop syncing an inbox (its events stay in Kafka)."""
    settings = _settings(ctx)
    if not _store(settings).remove(inbox_id):
        raise click.UsageError(f"no inbox {inbox_id!r} in {_where(settings)}")
    if forget_checkpoints:
        asyncio.run(_forget(settings, inbox_id))
    console.print(f"removed inbox {inbox_id}")


async def _forget(settings: Settings, inbox_id: str) -> None:
    from inboxstream.core.kafka import ensure_topics, make_producer

    await ensure_topics(settings.kafka, settings.topics, [settings.topics.checkpoints])
    producer = make_producer(settings.kafka)
    await producer.start()
    store = CheckpointStore(settings.kafka, settings.topics.checkpoints.name, producer)
    try:
        await store.start()
        await store.forget_inbox(inbox_id)
    finally:
        await store.stop()
        await producer.stop()


@inbox.command("rekey")
@click.option(
    "--new-key",
    is_flag=True,
    help="Generate a new key in the key file first (with INBOXSTREAM_SECRET_KEY, put the new "
    "key first in it instead and run without this flag).",
)
@click.pass_context
def inbox_rekey(ctx: click.Context, new_key: bool) -> None:
    """Re-encrypt every stored inbox secret under the newest key, then retire the old keys.

    A crash half-way loses nothing: the old key stays in the key file until every secret is
    re-encrypted, and every file is rewritten atomically.

    With the registry topic, every producer host holds the keys: put the new key first
    (INBOXSTREAM_SECRET_KEY="new,old" or the key file) on every host, run rekey (it rewrites
    each record under the new key), then retire the old key everywhere."""
    settings = _settings(ctx)
    if settings.producer.registry == "topic":
        _rekey_topic(settings, new_key)
        return
    registry = _registry(settings)
    try:
        if new_key:
            registry.box.add_new_key()
        count = registry.rekey()
        if registry.errors:
            for name, reason in registry.errors.items():
                console.print(f"[red]not re-encrypted {name}:[/red] {reason}")
            console.print("old keys kept: fix the files above and run rekey again")
            raise SystemExit(1)
        registry.box.drop_old_keys()
    except SecretKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
    console.print(f"re-encrypted {count} inbox secret(s) under the newest key")


def _rekey_topic(settings: Settings, new_key: bool) -> None:
    if new_key:
        raise click.UsageError(
            "in a fleet every producer needs the new key: put it first in "
            "INBOXSTREAM_SECRET_KEY (or the key file) on every producer host, then run rekey "
            "without --new-key"
        )
    store = _TopicStore(settings)
    try:
        inboxes = store.load()
    except SecretKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
    if store.errors:
        for inbox_id, reason in store.errors.items():
            console.print(f"[red]cannot re-encrypt {inbox_id}:[/red] {reason}")
        console.print("nothing rewritten: fix the records above (inbox add) and run rekey again")
        raise SystemExit(1)
    asyncio.run(store.topics.add_many(list(inboxes.values())))
    console.print(
        f"re-encrypted {len(inboxes)} inbox secret(s) in {_where(settings)} under the newest "
        "key; retire the old key on every producer host"
    )


@inbox.command("list")
@click.pass_context
def inbox_list(ctx: click.Context) -> None:
    """The registered inboxes (never their passwords)."""
    registry = _store(_settings(ctx))
    inboxes = registry.load()
    partitions = registry.partitions if isinstance(registry, _TopicStore) else {}
    columns = ["id", "imap", "security", "username", "attachments", "certificate"]
    table = Table(*columns, *(["partition"] if partitions else []))
    for i in inboxes.values():
        table.add_row(
            i.id,
            f"{i.imap_host}:{i.imap_port}",
            i.imap_security,
            i.username,
            "logged" if i.log_attachments else "off",
            "unverified allowed" if i.allow_unverified_certificate else "verified",
            *([str(partitions[i.id])] if partitions else []),
        )
    _out().print(table)
    for name, reason in registry.errors.items():
        console.print(f"[yellow]skipped {name}:[/yellow] {reason}")


@inbox.command("status")
@click.argument("inbox_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def inbox_status(ctx: click.Context, inbox_id: str | None, as_json: bool) -> None:
    """Latest state of each inbox (from inbox.status) and each folder's checkpoint."""
    settings = _settings(ctx)
    statuses, checkpoints = asyncio.run(_read_status(settings))
    ids = sorted(set(statuses) | set(_store(settings).load()))
    if inbox_id is not None:
        ids = [i for i in ids if i == inbox_id]
        if not ids:
            raise click.UsageError(f"nothing known about inbox {inbox_id!r}")
    if as_json:
        document = {
            "inboxes": [
                {"inbox": i, **(statuses[i].model_dump(mode="json") if i in statuses else {})}
                for i in ids
            ],
            "folders": [
                {
                    "inbox": i,
                    "folder": folder,
                    "uidvalidity": cp.uidvalidity,
                    "last_uid": cp.last_uid,
                    "highestmodseq": cp.highestmodseq,
                }
                for (i, folder), cp in sorted(checkpoints.items())
                if i in ids
            ],
        }
        click.echo(json.dumps(document, ensure_ascii=False))
        return
    table = Table("inbox", "state", "folder", "progress", "reason", "at", "producer")
    for i in ids:
        event = statuses.get(i)
        if event is None:
            table.add_row(i, "(no status yet)", "", "", "", "")
            continue
        progress = (
            f"{event.progress_done} of {event.progress_total}"
            if event.progress_total is not None
            else ""
        )
        table.add_row(
            i,
            event.state,
            event.folder or "",
            progress,
            event.reason or "",
            event.at.isoformat(timespec="seconds"),
            event.producer,
        )
    _out().print(table)
    folders = Table("inbox", "folder", "uidvalidity", "last uid", "highestmodseq")
    for (i, folder), cp in sorted(checkpoints.items()):
        if i in ids:
            folders.add_row(
                i, folder, str(cp.uidvalidity), str(cp.last_uid), str(cp.highestmodseq or "")
            )
    _out().print(folders)


async def _read_status(settings: Settings) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    from inboxstream.core.kafka import ensure_topics

    topics = settings.topics
    await ensure_topics(settings.kafka, topics, [topics.status, topics.checkpoints])
    statuses = await latest_status(settings.kafka, topics.status.name)
    store = CheckpointStore(settings.kafka, topics.checkpoints.name)
    try:
        await store.start()
    finally:
        await store.stop()
    known = {(cp.inbox_id, cp.folder): cp for cp in store.all()}
    return statuses, known


@inbox.command("migrate")
@click.pass_context
def inbox_migrate(ctx: click.Context) -> None:
    """Copy every inbox of the registry folder into the fleet's registry topic.

    The files stay as they are (delete them once the fleet runs); run it again after a change
    to a file and the topic record is replaced. Then set producer.registry = "topic"."""
    settings = _settings(ctx)
    folder = _registry(settings)
    inboxes = folder.load()
    topic = _TopicStore(settings)
    for inbox_id, created in asyncio.run(topic.topics.add_many(list(inboxes.values()))).items():
        console.print(f"{'copied' if created else 'updated'} {inbox_id}")
    for name, reason in folder.errors.items():
        console.print(f"[yellow]not copied {name}:[/yellow] {reason}")
    console.print(
        f"{len(inboxes)} inbox(es) in registry topic {settings.topics.registry.name}; set "
        'producer.registry = "topic" (INBOXSTREAM_PRODUCER__REGISTRY=topic) to run a fleet'
    )
    if folder.errors:
        raise SystemExit(1)


@click.group("producer")
def producer() -> None:
    """The IMAP producer service."""


@producer.command("run")
@click.option("--no-progress", is_flag=True, help="No progress bars (e.g. under a supervisor).")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="/metrics, /healthz, /readyz on this loopback port (default: metrics.producer_port; "
    "0 off).",
)
@click.pass_context
def producer_run(ctx: click.Context, no_progress: bool, metrics_port: int | None) -> None:
    """Sync every registered inbox into Kafka until stopped (Ctrl-C or SIGTERM).

    Backfills from each folder's checkpoint, then follows live changes; inboxes added or
    removed with ``inboxstream inbox`` are picked up without a restart.
    """
    settings = _settings(ctx)
    if settings.producer.registry == "topic":
        console.print(
            f"producer: fleet member of {settings.producer.fleet_group}, "
            f"inboxes leased from {_where(settings)}"
        )
    else:
        console.print(
            f"producer: registry {settings.producer.registry_dir}, "
            f"{len(_registry(settings).load()) + len(settings.inboxes)} inbox(es)"
        )
    asyncio.run(
        _run(settings, progress=not no_progress and console.is_terminal, ops_port=metrics_port)
    )


async def _run(settings: Settings, *, progress: bool, ops_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=not progress,
    )
    tasks: dict[tuple[str, str], TaskID] = {}

    def on_progress(inbox_id: str, p: FolderProgress) -> None:
        key = (inbox_id, p.folder)
        if key not in tasks:
            tasks[key] = bars.add_task(f"{inbox_id} {p.folder}", total=max(p.total, 1))
        bars.update(tasks[key], completed=min(p.done, p.total), total=max(p.total, 1))

    service = ProducerService(settings, _registry(settings), on_progress=on_progress)

    def ready() -> str | None:
        if stop.is_set():
            return "stopping"
        if not service.ready.is_set():
            return "starting: topics, schemas and the inbox registry (or the fleet lease)"
        return None

    async with ops_endpoints(settings.metrics, "producer", ready, ops_port):
        with bars:
            await service.run(stop)
    console.print("producer stopped")

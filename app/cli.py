"""The ``inboxstream`` command."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inboxstream.app.failures import EX_CONFIG, EX_DATAERR, EX_FAILED, EX_UNAVAILABLE, describe
from inboxstream.core.logs import LogFormat
from inboxstream.core.logs import configure as configure_logs
from inboxstream.core.settings import Settings, SettingsError, load_settings
from inboxstream.errors import InboxstreamError
from inboxstream.infra.common import InfraError

console = Console(stderr=True)
out = Console()

SERVICES = ("kafka", "schema_registry", "dovecot", "postfix", "clickhouse")


def _service(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"inboxstream.infra.{name}")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]()
    return settings


def _fail(message: str, code: int = EX_FAILED) -> None:
    """One line on stderr (never wrapped: scripts and log collectors read it), then exit."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    line = line.replace(":; ", ": ")
    console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, highlight=False)
    sys.exit(code)


class _Main(click.Group):
    """The top-level group: an expected failure of any command (app/failures.py) ends as one
    line on stderr and its exit code, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            described = describe(exc)
            if described is None:
                raise  # a bug: the traceback is what a bug report needs
            code, line = described
            _fail(line, code)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inboxstream", prog_name="inboxstream")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="INBOXSTREAM_CONFIG",
    help="TOML config file (env vars INBOXSTREAM_* override it).",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Overrides the log_level setting (INBOXSTREAM_LOG_LEVEL; default WARNING).",
)
@click.option(
    "--log-format",
    default=None,
    type=click.Choice(["text", "json"]),
    help="Overrides the log_format setting: json is one object a line, with inbox and folder.",
)
@click.pass_context
def main(
    ctx: click.Context, config: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """inboxstream: connected inboxes as Kafka events, projected into ClickHouse."""
    cli_format: LogFormat | None = (
        "json" if log_format == "json" else "text" if log_format else None
    )
    configure_logs(log_level or "WARNING", cli_format or "text")
    cache: dict[str, Settings] = {}

    def settings() -> Settings:
        if "s" not in cache:
            try:
                cache["s"] = load_settings(config)
            except SettingsError as exc:
                _fail(f"configuration: {exc}", EX_CONFIG)
            # the settings, unless the command line said otherwise
            configure_logs(log_level or cache["s"].log_level, cli_format or cache["s"].log_format)
        return cache["s"]

    ctx.obj = {"settings": settings}


# --- infra -----------------------------------------------------------------------------------


@main.group()
def infra() -> None:
    """Install, start, stop and inspect the local services (no systemd, no Docker)."""


def _each(services: tuple[str, ...], action: Callable[[ModuleType, str], None]) -> None:
    for name in services or SERVICES:
        try:
            action(_service(name), name)
        except InfraError as exc:
            _fail(f"{name}: {exc}")


_service_arg = click.argument("services", nargs=-1, type=click.Choice(SERVICES))


@infra.command("install")
@_service_arg
def infra_install(services: tuple[str, ...]) -> None:
    """Install what is missing (apt, Maven Central); a second run changes nothing."""

    def act(mod: ModuleType, name: str) -> None:
        t0 = time.monotonic()
        did = mod.install()
        state = "installed" if did else "already installed"
        console.print(f"{name}: {state} ({time.monotonic() - t0:.1f}s)")

    _each(services, act)


@infra.command("start")
@_service_arg
def infra_start(services: tuple[str, ...]) -> None:
    """Install if needed, then start and wait until healthy (idempotent)."""

    def act(mod: ModuleType, name: str) -> None:
        t0 = time.monotonic()
        mod.install()
        did = mod.start()
        state = "started" if did else "already running"
        console.print(f"{name}: {state} ({time.monotonic() - t0:.1f}s)")

    _each(services, act)


@infra.command("stop")
@_service_arg
def infra_stop(services: tuple[str, ...]) -> None:
    """Stop the services this project started, waiting for them to exit."""

    def act(mod: ModuleType, name: str) -> None:
        mod.stop()
        console.print(f"{name}: stopped")

    _each(services, act)


@infra.command("status")
@_service_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def infra_status(services: tuple[str, ...], as_json: bool) -> None:
    """Show whether each service is installed and running, and where it listens."""
    rows = [_service(name).status() for name in services or SERVICES]
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows], default=str))
        return
    table = Table("service", "installed", "running", "pid", "endpoints", "detail")
    for r in rows:
        endpoints = ", ".join(f"{k}={v}" for k, v in r.endpoints.items())
        table.add_row(
            r.name, str(r.installed), str(r.running), str(r.pid or ""), endpoints, r.detail
        )
    out.print(table)


# --- topics and database ---------------------------------------------------------------------


@main.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create the topics that are missing, with their retention and compaction."""
    from inboxstream.core.kafka import ensure_topics

    s = _settings(ctx)
    created = asyncio.run(ensure_topics(s.kafka, s.topics))
    console.print(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@main.command("query")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def query(ctx: click.Context, sql: str, fmt: str) -> None:
    """Run one read statement against the projections and print the rows (while a sink owns
    the embedded path, it goes through the sink). Read-only: ClickHouse's readonly = 1, no
    table functions that reach outside the database, no INTO OUTFILE."""
    from inboxstream.sinks.endpoint import connect_for_reading

    try:
        rows = connect_for_reading(_settings(ctx).clickhouse).query(sql)
    except InboxstreamError as exc:
        # unreachable or busy: the service (69); otherwise the statement itself (65)
        code = EX_UNAVAILABLE if exc.retriable else EX_DATAERR
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, code)
        return
    _print_rows(rows, fmt)


def _print_rows(rows: list[dict[str, Any]], fmt: str = "table", title: str | None = None) -> None:
    if fmt == "json":
        for row in rows:
            out.print_json(json.dumps(row, default=str))
        return
    if not rows:
        out.print(f"{title}: (no rows)" if title else "(no rows)")
        return
    table = Table(*rows[0].keys(), title=title, title_justify="left")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


# --- pipeline --------------------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@main.command("sync")
@click.option("--inbox", "inbox_ids", multiple=True, help="Only these inbox ids (default all).")
@click.pass_context
def sync(ctx: click.Context, inbox_ids: tuple[str, ...]) -> None:
    """Publish every message of the configured inboxes to Kafka, once."""
    from inboxstream.app.pipeline import sync_inbox_once

    s = _settings(ctx)
    inboxes = [i for i in s.inboxes if not inbox_ids or i.id in inbox_ids]
    if not inboxes:
        _fail("no inboxes configured (set [[inboxes]] in the config file)")
    for inbox in inboxes:
        report = _run_sync(s, inbox, sync_inbox_once)
        console.print(f"{inbox.id}: {report.published} messages published")


def _run_sync(s: Settings, inbox: Any, fn: Any) -> Any:
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def on_progress(p: Any) -> None:
            if p.folder not in tasks:
                tasks[p.folder] = progress.add_task(f"{inbox.id} {p.folder}", total=p.total)
            progress.update(tasks[p.folder], completed=p.done, total=max(p.total, p.done))

        try:
            return asyncio.run(fn(s, inbox, on_progress=on_progress))
        except InboxstreamError as exc:
            _fail(f"{inbox.id}: {exc}")


@main.command("demo")
@click.option("--threads", default=80, show_default=True, help="Conversations to generate.")
@click.option(
    "--user",
    default="demo@inboxstream.test",
    show_default=True,
    help="The demo mailbox (created in the local Dovecot).",
)
@click.option(
    "--processor-group",
    default="inboxstream-processor",
    show_default=True,
    help="Consumer group of the stream processor the demo runs.",
)
@click.pass_context
def demo(ctx: click.Context, threads: int, user: str, processor_group: str) -> None:
    """Start the services, fill a real mailbox, sync it, thread it and match CRM replies
    (exactly once), project everything into ClickHouse and print the analytics."""
    from inboxstream.app import demo as d
    from inboxstream.app.mailgen import generate_mailbox
    from inboxstream.app.pipeline import open_clickhouse, run_sink, sync_inbox_once
    from inboxstream.infra import dovecot, kafka, schema_registry
    from inboxstream.processors.processor import ProcessorConfig, run_processor
    from inboxstream.sinks import analytics as named

    t0 = time.monotonic()
    for name, mod in (
        ("kafka", kafka),
        ("schema_registry", schema_registry),
        ("dovecot", dovecot),
    ):
        try:
            mod.install()
            started = mod.start()
        except InfraError as exc:
            _fail(f"{name}: {exc}")
        console.print(f"{name}: {'started' if started else 'already running'}")
    password = d.demo_password()
    dovecot.add_user(user, password)
    if d.message_count(user, password) == 0:
        counts = d.fill_mailbox(user, password, generate_mailbox(user, threads=threads))
        console.print(f"filled {user}: {counts}")
    else:
        console.print(f"{user} already has mail; syncing it again (idempotent)")
    s = _settings(ctx)
    config = ProcessorConfig(group_id=processor_group)

    def process(stage: str) -> None:
        stats = asyncio.run(run_processor(s, config, until_end=True))
        console.print(
            f"processor ({stage}, exactly once): {stats.records} records in {stats.batches} "
            f"transactions; {dict(sorted(stats.counts.items()))}"
        )

    # The CRM's side comes first, as in life: it sent the mail that opened some of these
    # conversations (crm.outbound), and the processor learns those Message-IDs before the
    # replies are synced. (A reply that arrives first is held for 24 h of event time.)
    crm = d.crm_outbound_events(user, generate_mailbox(user, threads=threads))
    console.print(f"crm.outbound: {asyncio.run(d.publish_crm_outbound(s, crm))} CRM-sent mails")
    process("CRM records")
    inbox = d.demo_inbox(password, user)
    report = _run_sync(s, inbox, sync_inbox_once)
    console.print(f"published {report.published} messages from {len(report.folders)} folders")
    process("mail")
    ch = open_clickhouse(s)
    result = asyncio.run(run_sink(s, ch, until_caught_up=True))
    console.print(f"sink: consumed {result.stats.consumed}, inserted {result.stats.inserted}")
    db_name = s.clickhouse.database
    where = f"inbox_id = '{user}'"
    _print_rows(
        ch.query(
            f"SELECT folder, folder_role, count() AS messages, sum(has_attachments) AS "
            f"with_attachments, formatReadableSize(sum(size)) AS size "
            f"FROM {db_name}.email_metadata FINAL WHERE {where} GROUP BY folder, folder_role "
            f"ORDER BY messages DESC"
        ),
        title="Messages per folder",
    )
    _print_rows(
        ch.query(
            f"SELECT replied_at, contact_email, matched_by, subject, "
            f"replaceAll(leftUTF8(body_text, 40), '\\n', ' ') AS body "
            f"FROM {db_name}.engagements_current WHERE {where} "
            f"ORDER BY replied_at DESC LIMIT 8"
        ),
        title="CRM engagements (replies to CRM mail; bodies only for these threads)",
    )
    _print_rows(
        ch.query(
            f"SELECT message_id, message_id_synthetic, subject, parse_error "
            f"FROM {db_name}.email_metadata FINAL WHERE {where} "
            f"AND (message_id_synthetic OR parse_error IS NOT NULL)"
        ),
        title="Malformed mail (published, never dropped)",
    )
    # The named analytics queries, the same files `inboxstream analytics` runs.
    for query in named.load_queries().values():
        _print_rows(named.run(ch, query), title=query.title)
    console.print(f"demo done in {time.monotonic() - t0:.1f}s")


# --- commands that live with their packages ---------------------------------------------------
# Each area registers its own click commands here, one line each, so the modules stay small.
main.add_command(__import__("inboxstream.app.cli_send", fromlist=["send"]).send)
main.add_command(__import__("inboxstream.app.cli_process", fromlist=["thread"]).thread)
main.add_command(__import__("inboxstream.app.cli_process", fromlist=["process"]).process)
main.add_command(__import__("inboxstream.app.cli_process", fromlist=["replay"]).replay)
main.add_command(__import__("inboxstream.app.cli_db", fromlist=["db"]).db)
main.add_command(__import__("inboxstream.app.cli_sink", fromlist=["sink"]).sink)
main.add_command(__import__("inboxstream.app.cli_analytics", fromlist=["analytics"]).analytics)
main.add_command(__import__("inboxstream.app.cli_inbox", fromlist=["inbox"]).inbox)
main.add_command(__import__("inboxstream.app.cli_inbox", fromlist=["producer"]).producer)

"""``inboxstream db``: the ClickHouse schema and its retention."""

from __future__ import annotations

import click
from rich.console import Console

from inboxstream.core.settings import Settings

console = Console(stderr=True)


@click.group()
def db() -> None:
    """The ClickHouse projections."""


@db.command("migrate")
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Apply the schema migrations not applied yet (re-runnable)."""
    from inboxstream.sinks.clickhouse import connect
    from inboxstream.sinks.migrate import migrate

    s: Settings = ctx.obj["settings"]()
    ch = connect(s.clickhouse)
    applied = migrate(ch)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    console.print(f"applied: {names}" if applied else "schema is up to date")


@db.command("retention")
@click.pass_context
def db_retention(ctx: click.Context) -> None:
    """Purge engagements deleted over 90 days ago and apply the TTLs now (bodies 7 days,
    metadata, threads and status 60 days). The sink purges hourly by itself; TTLs apply at
    background merges; this forces both now."""
    from inboxstream.sinks.clickhouse import connect
    from inboxstream.sinks.retention import enforce_retention

    s: Settings = ctx.obj["settings"]()
    ch = connect(s.clickhouse)
    purged = enforce_retention(ch)
    console.print(f"purged {purged} deleted engagements; TTLs applied")

"""``inboxstream sink``: project every sink topic into ClickHouse."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click
from rich.console import Console

from inboxstream.core.settings import Settings
from inboxstream.errors import InboxstreamError

console = Console(stderr=True)


@click.group(invoke_without_command=True)
@click.pass_context
def sink(ctx: click.Context) -> None:
    """Project Kafka topics into ClickHouse (`sink run`; bare `sink` does the same)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(sink_run)


@sink.command("run")
@click.option("--until-caught-up", is_flag=True, help="Exit once every topic is projected.")
@click.option(
    "--serve-queries/--no-serve-queries",
    default=True,
    show_default=True,
    help="With embedded ClickHouse: answer read-only queries (analytics) for other processes.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="/metrics, /healthz, /readyz on this loopback port (default: metrics.sink_port; 0 off).",
)
@click.pass_context
def sink_run(
    ctx: click.Context, until_caught_up: bool, serve_queries: bool, metrics_port: int | None
) -> None:
    """Consume inbox.* and crm.* topics into their tables until Ctrl-C / SIGTERM.

    With the embedded engine this process owns the chDB path; `inboxstream analytics` and
    `inboxstream query` read through its loopback query endpoint meanwhile.
    """
    from inboxstream.app.pipeline import open_clickhouse, run_sink
    from inboxstream.core.ops_server import ops_endpoints
    from inboxstream.sinks.clickhouse import EmbeddedClickHouse
    from inboxstream.sinks.endpoint import QueryEndpoint
    from inboxstream.sinks.runner import BatchingSink

    s: Settings = ctx.obj["settings"]()
    try:
        ch = open_clickhouse(s)
    except InboxstreamError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
    endpoint = (
        QueryEndpoint(ch).start() if serve_queries and isinstance(ch, EmbeddedClickHouse) else None
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running: list[BatchingSink] = []

        def ready() -> str | None:
            return running[0].readiness() if running else "starting: topics, schemas, consumer"

        async with ops_endpoints(s.metrics, "sink", ready, metrics_port):
            result = await run_sink(
                s, ch, stop=stop, until_caught_up=until_caught_up, on_start=running.append
            )
        st = result.stats
        console.print(
            f"consumed {st.consumed}, inserted {st.inserted} "
            f"({', '.join(f'{t}={n}' for t, n in sorted(st.inserted_by_table.items()))}), "
            f"dead-lettered {st.dead_lettered}, insert retries {st.insert_retries}"
        )

    try:
        asyncio.run(main())
    finally:
        if endpoint is not None:
            endpoint.close()
        with contextlib.suppress(InboxstreamError):
            ch.close()

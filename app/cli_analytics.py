"""``inboxstream analytics``: the questions a data team asks first, as tables, CSV or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from inboxstream.core.settings import Settings
from inboxstream.errors import InboxstreamError

console = Console(stderr=True)
out = Console()


def _table(title: str, rows: list[dict[str, Any]]) -> Table | str:
    if not rows:
        return f"{title}: (no rows)"
    table = Table(title=title, title_justify="left")
    for key, value in rows[0].items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        table.add_column(key, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


@click.command("analytics")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only these named queries (file names in sinks/sql/analytics without .sql).",
)
@click.option("--parquet", "parquet_table", metavar="TABLE", help="Export one table as Parquet.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def analytics(
    ctx: click.Context,
    fmt: str,
    only: tuple[str, ...],
    parquet_table: str | None,
    out_file: Path | None,
) -> None:
    """Messages per inbox per day, CRM reply rate and reply time, thread lengths, top sender
    domains, sync lag and disconnected inboxes, from the named SQL in sinks/sql/analytics/.

    While `inboxstream sink run` owns the embedded ClickHouse, this reads through it.
    """
    from inboxstream.sinks import analytics as named
    from inboxstream.sinks.endpoint import connect_for_reading

    s: Settings = ctx.obj["settings"]()
    if (parquet_table is None) != (out_file is None):
        raise click.UsageError("--parquet TABLE and --out FILE go together")
    try:
        ch = connect_for_reading(s.clickhouse)
        if parquet_table is not None and out_file is not None:
            data = named.export_parquet(ch, parquet_table)
            out_file.write_bytes(data)
            console.print(f"wrote {parquet_table} to {out_file} ({len(data)} bytes, Parquet)")
            return
        queries = named.load_queries()
        unknown = [n for n in only if n not in queries]
        if unknown:
            raise click.UsageError(f"unknown query {unknown[0]!r}; one of: {', '.join(queries)}")
        chosen = [queries[n] for n in (only or tuple(queries))]
        if fmt == "csv":
            for q in chosen:
                if len(chosen) > 1:
                    sys.stdout.write(f"# {q.name}\n")
                body = ch.query_bytes(q.for_database(ch.database), "CSVWithNames")
                text = body.decode()
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                if len(chosen) > 1:
                    sys.stdout.write("\n")
            return
        results = {q.name: (q.title, named.run(ch, q)) for q in chosen}
    except (InboxstreamError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
    if fmt == "json":
        doc = {name: {"title": title, "rows": rows} for name, (title, rows) in results.items()}
        sys.stdout.write(json.dumps(doc, default=str, indent=2) + "\n")
        return
    for title, rows in results.values():
        out.print(_table(title, rows))

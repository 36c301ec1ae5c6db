"""``inboxstream thread``, ``process`` and ``replay``: the stream processors' commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("thread")
@click.option(
    "--algorithm",
    type=click.Choice(["rfc5256", "references"]),
    default="rfc5256",
    show_default=True,
    help="rfc5256: REFERENCES with the base-subject merge; references: links only.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def thread(algorithm: str, file: Path) -> None:
    """Thread an mbox FILE offline; one JSON object per thread per line."""
    from processors.mbox import thread_mbox

    for obj in thread_mbox(file, "rfc5256" if algorithm == "rfc5256" else "references"):
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")

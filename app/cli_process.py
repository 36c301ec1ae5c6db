"""``inboxstream thread``, ``process`` and ``replay``: the stream processors' commands."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inboxstream.app.failures import BadInputError

if TYPE_CHECKING:
    from inboxstream.processors.jwz import Algorithm


def _algorithm(name: str) -> Algorithm:
    """The --algorithm choice as the processors' literal type."""
    return "rfc5256" if name == "rfc5256" else "references"


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
    from inboxstream.processors.mbox import thread_mbox

    threads = 0
    for obj in thread_mbox(file, _algorithm(algorithm)):
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        threads += 1
    if not threads and file.stat().st_size:
        # mailbox.mbox reads any file: one with no "From " separator line holds no message
        raise BadInputError(f"{file} is not an mbox file: no message starts with a 'From ' line")


@click.command("process")
@click.option("--group-id", default="inboxstream-processor", show_default=True)
@click.option(
    "--instance-id",
    default="0",
    show_default=True,
    help="Names this instance in logs; exactly-once fencing is per input partition.",
)
@click.option("--algorithm", type=click.Choice(["rfc5256", "references"]), default="rfc5256")
@click.option("--until-idle", type=float, default=None, help="Exit after this many idle seconds.")
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Exit once every assigned input partition is processed to its end (a batch job).",
)
@click.option(
    "--max-records",
    type=int,
    default=5000,
    show_default=True,
    help="A transaction closes at this many input records...",
)
@click.option(
    "--transaction-ms",
    type=int,
    default=100,
    show_default=True,
    help="...or this long after the fetch that opened it, whichever comes first.",
)
@click.option(
    "--batches-in-flight",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Batches under way at once: the next fetch waits until the oldest has committed.",
)
@click.option(
    "--align-wait-ms",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="How long a partition's messages or bodies wait for the other topic when it has more "
    "to read, so a message and its body are handled together; 0 never waits.",
)
@click.option(
    "--engine-processes",
    type=click.IntRange(min=0),
    default=None,
    help="Processes the record path (decoding, threading, matching, encoding) runs in, beside "
    "the Kafka work; 0 runs it in the same process. Default: 1 on two cores or more, else 0.",
)
@click.option("--pause-in-transaction", type=float, default=0.0, hidden=True)
@click.option("--session-timeout-ms", type=int, default=10_000, hidden=True)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="/metrics, /healthz, /readyz on this loopback port (default: metrics.processor_port; "
    "0 off).",
)
@click.pass_context
def process(
    ctx: click.Context,
    group_id: str,
    instance_id: str,
    algorithm: str,
    until_idle: float | None,
    until_caught_up: bool,
    max_records: int,
    transaction_ms: int,
    batches_in_flight: int,
    align_wait_ms: int,
    engine_processes: int | None,
    pause_in_transaction: float,
    session_timeout_ms: int,
    metrics_port: int | None,
) -> None:
    """Run the stream processor (threads, CRM engagements, retention), exactly once."""
    import asyncio
    import logging

    from inboxstream.core.gc_tuning import tune_for_streaming
    from inboxstream.core.ops_server import ops_endpoints
    from inboxstream.processors.processor import ProcessorConfig, StreamProcessor

    settings = ctx.obj["settings"]()
    config = ProcessorConfig(
        group_id=group_id,
        instance_id=instance_id,
        algorithm=_algorithm(algorithm),
        max_records=max_records,
        transaction_ms=transaction_ms,
        batches_in_flight=batches_in_flight,
        align_wait_ms=align_wait_ms,
        engine_processes=engine_processes,
        pause_in_transaction_s=pause_in_transaction,
        session_timeout_ms=session_timeout_ms,
    )
    log = logging.getLogger("inboxstream.process")

    async def main() -> None:
        tune_for_streaming()
        processor = StreamProcessor(settings, config)

        def in_transaction(partition: int, threads_here: int) -> None:
            # The kill -9 and zombie tests wait for this line: a transaction is open right now,
            # with ``threads_here`` thread events of its own in the log, uncommitted.
            committed = processor.stats.threads_committed
            sys.stderr.write(f"IN-TRANSACTION {partition} {threads_here} {committed}\n")
            sys.stderr.flush()

        processor.on_in_transaction = in_transaction
        # SIGTERM (systemd, Kubernetes) and Ctrl-C stop cleanly: the transactions under way
        # finish (or abort), then the consumer leaves the group, so its partitions move to the
        # other instances at once instead of after the session timeout.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with ops_endpoints(settings.metrics, "processor", processor.readiness, metrics_port):
            await processor.start()
            try:
                stats = await processor.run(stop, idle_exit_s=until_idle, until_end=until_caught_up)
            finally:
                await processor.stop()
        log.warning("processed %d records in %d batches", stats.records, stats.batches)
        sys.stderr.write(json.dumps({"records": stats.records, **stats.counts}) + "\n")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return


@click.command("replay")
@click.option("--version", "version", required=True, help="Output version, e.g. v2.")
@click.option(
    "--from-timestamp",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="Start at this time (UTC; offsets_for_times); default: earliest retained offset.",
)
@click.option("--group-id", default="inboxstream-processor", show_default=True)
@click.option("--algorithm", type=click.Choice(["rfc5256", "references"]), default="rfc5256")
@click.option("--until-idle", type=float, default=10.0, show_default=True)
@click.pass_context
def replay(
    ctx: click.Context,
    version: str,
    from_timestamp: object,
    group_id: str,
    algorithm: str,
    until_idle: float,
) -> None:
    """Reprocess the inputs into a fresh group and output version (topics suffixed .VERSION)."""
    import asyncio
    from datetime import UTC, datetime

    from inboxstream.processors.replay import replay as run_replay

    settings = ctx.obj["settings"]()
    start = None
    if isinstance(from_timestamp, datetime):
        start = from_timestamp.replace(tzinfo=UTC)
    stats = asyncio.run(
        run_replay(
            settings,
            version=version,
            base_group_id=group_id,
            algorithm=_algorithm(algorithm),
            start=start,
            idle_exit_s=until_idle,
        )
    )
    sys.stdout.write(json.dumps({"version": version, "records": stats.records}) + "\n")

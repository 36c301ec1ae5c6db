"""``inboxstream send``: send one message through a configured inbox (send/sender.py).

Kept out of app/cli.py so that module stays small; registered there with one line. The
settings come from the main group's context (``ctx.obj["settings"]``), so ``--config`` and the
``INBOXSTREAM_*`` variables work as for every other command.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.console import Console

from inboxstream.core.settings import InboxSettings, Settings
from inboxstream.errors import InboxstreamError

console = Console(stderr=True)


def _inbox(settings: Settings, inbox_id: str | None) -> InboxSettings:
    """The inbox to send through: from the config file or from ``inboxstream inbox add``'s
    registry (the registry wins for an id in both: it is what the producer service runs)."""
    from inboxstream.producers.registry import registry_for

    inboxes = {i.id: i for i in settings.inboxes}
    inboxes.update(registry_for(settings).load())
    if not inboxes:
        raise click.UsageError(
            "no inboxes configured (`inboxstream inbox add`, or [[inboxes]] in the config file)"
        )
    if inbox_id is None:
        if len(inboxes) > 1:
            ids = ", ".join(sorted(inboxes))
            raise click.UsageError(
                f"several inboxes are configured; pick one with --from-inbox ({ids})"
            )
        return next(iter(inboxes.values()))
    if inbox_id in inboxes:
        return inboxes[inbox_id]
    raise click.UsageError(f"no configured inbox has id {inbox_id!r}")


@click.command("send")
@click.option("--from-inbox", "inbox_id", help="Id of the configured inbox to send through.")
@click.option("--to", "to", multiple=True, help="Recipient (repeatable): a@b.c or 'Name <a@b.c>'.")
@click.option("--cc", "cc", multiple=True, help="Copy recipient (repeatable).")
@click.option("--bcc", "bcc", multiple=True, help="Blind copy recipient (repeatable).")
@click.option("--subject", required=True)
@click.option("--body", help="Plain-text body.")
@click.option(
    "--body-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the plain-text body from this file (UTF-8).",
)
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Attach this file (repeatable).",
)
@click.option("--in-reply-to", help="Message-ID this message answers (threads the reply).")
@click.option(
    "--idempotency-key",
    help="Retrying with the same key never sends twice (default: a new random key).",
)
@click.option("--crm-ref", help="The CRM object this mail belongs to (goes into crm.outbound).")
@click.pass_context
def send(
    ctx: click.Context,
    inbox_id: str | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str,
    body: str | None,
    body_file: Path | None,
    attachments: tuple[Path, ...],
    in_reply_to: str | None,
    idempotency_key: str | None,
    crm_ref: str | None,
) -> None:
    """Send a message as the inbox owner, copy it to Sent, announce it on crm.outbound."""
    from inboxstream.core.oauth import TokenSources
    from inboxstream.producers.token_store import refresh_token_store
    from inboxstream.send.sender import AttachmentFile, Draft, send_message

    if body is not None and body_file is not None:
        raise click.UsageError("give --body or --body-file, not both")
    if not (to or cc or bcc):
        raise click.UsageError("give at least one --to, --cc or --bcc")
    text = body_file.read_text(encoding="utf-8") if body_file is not None else (body or "")
    settings: Settings = ctx.obj["settings"]()
    inbox = _inbox(settings, inbox_id)
    draft = Draft(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        text=text,
        attachments=tuple(AttachmentFile(p) for p in attachments),
        in_reply_to=in_reply_to,
        references=(in_reply_to,) if in_reply_to else (),
    )
    try:
        result = asyncio.run(
            send_message(
                settings,
                inbox,
                draft,
                idempotency_key=idempotency_key,
                crm_ref=crm_ref,
                tokens=TokenSources(refresh_token_store(settings)),
            )
        )
    except InboxstreamError as exc:
        kind = getattr(exc, "kind", type(exc).__name__)
        retry = "retriable" if exc.retriable else "not retriable"
        console.print(f"[red]error ({kind}, {retry}):[/red] {exc}")
        sys.exit(2 if exc.retriable else 1)
    if result.already_sent:
        console.print(
            f"already sent earlier (found in {result.sent_folder!r}); nothing sent now: "
            f"<{result.message_id}>"
        )
    else:
        console.print(
            f"sent <{result.message_id}> to {', '.join(result.recipients)}; copy in "
            f"{result.sent_folder!r} ({result.total_seconds:.2f}s)"
        )
    click.echo(result.message_id)

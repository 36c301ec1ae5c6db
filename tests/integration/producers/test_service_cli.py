"""``inboxstream inbox add|list|status|remove`` against the real Kafka and Dovecot: the
password is read from a file or a hidden prompt and never printed; status shows what the
service reported and each folder's checkpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from inboxstream.app.cli import main
from inboxstream.core.settings import Settings
from inboxstream.infra import dovecot
from inboxstream.producers.checkpoints import CheckpointStore
from tests.helpers.service import (
    deliver_many,
    fast_settings,
    idle_on,
    readers,
    running_service,
    service_env,
)
from tests.helpers.services import MailUser


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return service_env(fast_settings(settings, tmp_path / "inboxes")) | {"COLUMNS": "250"}


async def test_inbox_commands(
    settings: Settings, mail_user: MailUser, tmp_path: Path, env: dict[str, str]
) -> None:
    deliver_many(mail_user.name, 2)
    ep = dovecot.endpoints()
    runner = CliRunner()
    secret = tmp_path / "pw"
    secret.write_text(mail_user.password + "\n")
    add = [
        "inbox",
        "add",
        mail_user.name,
        "--host",
        ep.tls_hostname,
        "--port",
        str(ep.imaps_port),
        "--ca-file",
        str(ep.ca_cert),
    ]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    result = await asyncio.to_thread(
        runner.invoke, main, [*add, "--verify", "--password-file", str(wrong)], env=env
    )
    assert result.exit_code == 1 and "rejected the login" in result.output
    assert "not-the-password" not in result.output
    assert not (tmp_path / "inboxes" / f"{mail_user.name}.json").exists()  # nothing saved

    result = await asyncio.to_thread(
        runner.invoke, main, [*add, "--verify", "--password-file", str(secret)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "added" in result.output and "INBOX (inbox)" in result.output
    assert "Sent (sent)" in result.output
    # The hidden prompt: the typed password is not echoed.
    result = runner.invoke(main, add, input=mail_user.password + "\n", env=env)
    assert result.exit_code == 0, result.output
    assert "updated" in result.output and mail_user.password not in result.output

    listed = runner.invoke(main, ["inbox", "list"], env=env)
    assert mail_user.name in listed.output and mail_user.password not in listed.output

    s = fast_settings(settings, tmp_path / "inboxes")
    async with readers(s) as (_, status), running_service(s):
        await status.wait_for(
            idle_on("INBOX"),
            what="INBOX idle",
        )
    # The CLI runs its own event loop: call it from a thread, as from a shell.
    shown = await asyncio.to_thread(
        runner.invoke, main, ["inbox", "status", mail_user.name], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert "disconnected" in shown.output  # the service's clean stop is the latest state
    assert "INBOX" in shown.output and mail_user.password not in shown.output

    before = CheckpointStore(s.kafka, s.topics.checkpoints.name)
    await before.start()
    await before.stop()
    assert "INBOX" in before.for_inbox(mail_user.name)

    removed = await asyncio.to_thread(
        runner.invoke, main, ["inbox", "remove", mail_user.name, "--forget-checkpoints"], env=env
    )
    assert removed.exit_code == 0, removed.output
    store = CheckpointStore(s.kafka, s.topics.checkpoints.name)
    await store.start()
    await store.stop()
    assert store.for_inbox(mail_user.name) == {}  # tombstoned: re-adding re-reads everything
    listed = runner.invoke(main, ["inbox", "list"], env=env)
    assert mail_user.name not in listed.output
    missing = runner.invoke(main, ["inbox", "remove", mail_user.name], env=env)
    assert missing.exit_code != 0 and "no inbox" in missing.output

"""The local Postfix: idempotent start, status, loopback listeners, config from our dir."""

from __future__ import annotations

from inboxstream.infra import postfix
from inboxstream.infra.common import port_open


def test_start_is_idempotent_and_status_reports_endpoints(
    postfix_server: postfix.PostfixEndpoints,
) -> None:
    assert postfix.start() is False  # already running: left to its owner
    status = postfix.status()
    assert status.installed and status.running and status.pid
    assert status.endpoints["submission+starttls"] == f"127.0.0.1:{postfix_server.submission_port}"
    assert "auth socket present" in status.detail
    assert port_open(postfix_server.host, postfix_server.submission_port)
    assert port_open(postfix_server.host, postfix_server.smtps_port)
    assert not port_open(postfix_server.host, 25)  # submission only, no MX listener

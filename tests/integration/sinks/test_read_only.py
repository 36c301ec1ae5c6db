"""Every read path refuses what is not a read, by ClickHouse's own readonly and parser: the
in-process handle, the sink's query endpoint, and ``inboxstream query`` as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inboxstream.core.settings import ClickHouseSettings
from inboxstream.sinks.clickhouse import ClickHouse, EmbeddedClickHouse
from inboxstream.sinks.endpoint import (
    EndpointInfo,
    QueryEndpoint,
    RemoteEmbeddedClickHouse,
    connect_for_reading,
)
from inboxstream.sinks.exceptions import ClickHouseError

INBOXSTREAM = str(Path(sys.executable).with_name("inboxstream"))


def attacks(db: str, out: Path) -> list[str]:
    """Statements a read path must refuse; each would change something or reach outside."""
    return [
        f"CREATE DATABASE {db}_evil",
        f"CREATE TABLE {db}.evil (x Int8) ENGINE = Memory",
        f"INSERT INTO {db}.probe VALUES (99)",
        f"ALTER TABLE {db}.probe DELETE WHERE 1",
        f"DROP TABLE {db}.probe",
        f"TRUNCATE TABLE {db}.probe",
        f"SELECT x FROM {db}.probe INTO OUTFILE '{out}'",
        f"SELECT x FROM {db}.probe INTO OUTFILE '{out}' FORMAT CSV",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:1/x', 'LineAsString')",
        "SELECT * FROM s3('http://127.0.0.1:1/b/x.csv')",
        "SELECT * FROM remote('127.0.0.1:1', system.one)",
        "SELECT count() FROM file('/etc/passwd', 'LineAsString') SETTINGS readonly = 0",
        f"SELECT x FROM {db}.probe SETTINGS readonly = 0",
        "SET readonly = 0",
        f"SELECT 1; DROP TABLE {db}.probe",
        "SYSTEM DROP MARK CACHE",
        "SELEC 1",
    ]


def prepare(settings: ClickHouseSettings) -> None:
    ch = EmbeddedClickHouse.open(settings.path, settings.database)
    ch.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
    ch.command(f"CREATE TABLE {settings.database}.probe (x Int32) ENGINE = MergeTree ORDER BY x")
    ch.command(f"INSERT INTO {settings.database}.probe VALUES (1), (2)")


def assert_untouched(settings: ClickHouseSettings, out: Path) -> None:
    ch = EmbeddedClickHouse.open(settings.path, settings.database)
    db = settings.database
    assert ch.query(f"SELECT groupArray(x) AS xs FROM (SELECT x FROM {db}.probe ORDER BY x)") == [
        {"xs": [1, 2]}
    ]
    names = ch.query(f"SELECT name FROM system.databases WHERE name LIKE '{db}%' ORDER BY name")
    assert [r["name"] for r in names] == [db]
    assert not out.exists()


def check_refuses(handle: ClickHouse, settings: ClickHouseSettings, out: Path) -> None:
    db = settings.database
    for sql in attacks(db, out):
        with pytest.raises(ClickHouseError):
            handle.query(sql)
    # Reads still work, including text that only looks like a refused clause.
    assert handle.query(f"SELECT sum(x) AS s FROM {db}.probe") == [{"s": 3}]
    assert handle.query("SELECT 'INTO OUTFILE' AS `file(x)`") == [{"file(x)": "INTO OUTFILE"}]
    assert int(handle.query("SELECT count() AS n FROM numbers(5)")[0]["n"]) == 5
    assert handle.query(f"SHOW TABLES FROM {db}") == [{"name": "probe"}]
    assert_untouched(settings, out)


def test_the_in_process_read_handle_refuses_writes_and_escapes(
    clickhouse_settings: ClickHouseSettings, tmp_path: Path
) -> None:
    prepare(clickhouse_settings)
    handle = connect_for_reading(clickhouse_settings)
    with pytest.raises(ClickHouseError):
        handle.command(f"DROP TABLE {clickhouse_settings.database}.probe")
    check_refuses(handle, clickhouse_settings, tmp_path / "out.csv")


def test_the_sinks_query_endpoint_refuses_writes_and_escapes(
    clickhouse_settings: ClickHouseSettings, tmp_path: Path
) -> None:
    prepare(clickhouse_settings)
    owner = EmbeddedClickHouse.open(clickhouse_settings.path, clickhouse_settings.database)
    with QueryEndpoint(owner) as endpoint:
        info = EndpointInfo(os.getpid(), endpoint.port, endpoint._token)
        remote = RemoteEmbeddedClickHouse(info, clickhouse_settings.database)
        check_refuses(remote, clickhouse_settings, tmp_path / "out.csv")
        # The owner itself still writes: the lock is on the read connection only.
        owner.command(f"INSERT INTO {clickhouse_settings.database}.probe VALUES (3)")
        rows = remote.query(f"SELECT count() AS n FROM {clickhouse_settings.database}.probe")
        assert int(rows[0]["n"]) == 3


def test_the_query_command_refuses_with_one_line(tmp_path: Path) -> None:
    """`inboxstream query` on a free path of its own (no sink): no write, no file read or
    written, one line on stderr for each refusal."""
    db = "ro_cli"
    config = tmp_path / "inboxstream.toml"
    config.write_text(f'[clickhouse]\npath = "{tmp_path / "chdb"}"\ndatabase = "{db}"\n')
    out = tmp_path / "out.csv"
    run: Callable[[str], subprocess.CompletedProcess[str]] = lambda sql: subprocess.run(  # noqa: E731
        [INBOXSTREAM, "query", "--format", "json", sql],
        env=dict(os.environ, INBOXSTREAM_CONFIG=str(config), COLUMNS="200"),
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    for sql in [
        f"CREATE DATABASE {db}",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        f"SELECT 1 INTO OUTFILE '{out}'",
        "SELECT 1 SETTINGS readonly = 0",
        "SELEC 1",
    ]:
        result = run(sql)
        assert result.returncode != 0, (sql, result.stdout)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (sql, lines)
        assert "root:" not in result.stdout + result.stderr
    assert not out.exists()
    ok = run("SELECT 40 + 2 AS answer")
    assert ok.returncode == 0, ok.stderr
    assert '"answer": 42' in ok.stdout
    databases = run("SELECT name FROM system.databases WHERE name = 'ro_cli'")
    assert databases.returncode == 0 and "ro_cli" not in databases.stdout

"""Versioned, re-runnable schema migrations for the ClickHouse projections.

Migrations are ``sinks/sql/migrations/NNNN_name.sql``; ``{db}`` stands for the database.
Applied versions are recorded in ``schema_migrations``; running again applies only new files.
Statements are written ``IF NOT EXISTS`` so a migration interrupted halfway can simply rerun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from inboxstream.sinks.clickhouse import ClickHouse

MIGRATIONS_DIR = Path(__file__).resolve().parent / "sql" / "migrations"
_NAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` at line ends, dropping ``--`` comment lines (our files only, no strings
    with semicolons at line end)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        out.append(
            Migration(
                int(match["version"]),
                match["name"],
                tuple(split_statements(path.read_text())),
            )
        )
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a version number")
    return out


def applied_versions(ch: ClickHouse) -> set[int]:
    rows = ch.query(f"SELECT version FROM {ch.database}.schema_migrations FINAL")
    return {int(r["version"]) for r in rows}


def migrate(ch: ClickHouse, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply the migrations not applied yet, in order; return what was applied."""
    ch.command(f"CREATE DATABASE IF NOT EXISTS {ch.database}")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS {ch.database}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = applied_versions(ch)
    applied = []
    for migration in load_migrations(directory):
        if migration.version in done:
            continue
        for statement in migration.statements:
            ch.command(statement.replace("{db}", ch.database))
        ch.insert("schema_migrations", [{"version": migration.version, "name": migration.name}])
        applied.append(migration)
    return applied

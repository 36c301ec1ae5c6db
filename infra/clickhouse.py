"""The embedded ClickHouse engine (chDB): nothing to run, but the same install/start/status
verbs as the other services so ``inboxstream infra`` treats all three alike.

"Start" means: the engine loads and the schema is migrated at the configured path. The path
is then released again, because only one process may hold it (the sink owns it at run time).
"""

from __future__ import annotations

import importlib.util

from inboxstream.infra.common import InfraError, ServiceStatus

NAME = "clickhouse"


def install() -> bool:
    """chDB ships as a wheel in the project's dependencies; check it is importable."""
    if importlib.util.find_spec("chdb") is None:
        raise InfraError("chdb is not installed in this environment: run ./run setup")
    return False


def start(timeout: float = 60) -> bool:
    from inboxstream.core.settings import load_settings
    from inboxstream.sinks.clickhouse import connect
    from inboxstream.sinks.migrate import migrate

    settings = load_settings()
    ch = connect(settings.clickhouse)
    try:
        migrate(ch)
    finally:
        ch.close()
    return False


def stop() -> None:
    """Nothing runs outside the processes that open it."""


def status() -> ServiceStatus:
    from inboxstream.core.settings import load_settings

    settings = load_settings()
    ch = settings.clickhouse
    if ch.url is not None:
        return ServiceStatus(NAME, True, True, None, {"server": "configured URL (hidden)"})
    installed = importlib.util.find_spec("chdb") is not None
    return ServiceStatus(
        NAME,
        installed,
        ch.path.exists(),
        None,
        {"path": str(ch.path)},
        "embedded chDB; opened by the process that runs the sink",
    )

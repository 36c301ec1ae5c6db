"""One small interface over the two ClickHouse backends: embedded chDB and a server.

The same SQL runs on both. Rows go in columnar on both backends (sinks/columns.py): an Arrow
table read by chDB's ``Python()`` table function, clickhouse-connect's Native ``insert`` on a
server; defaults and DateTime64 precision follow what the JSONEachRow text path did.

chDB is in-process and only one process may open a data path, so the process that runs the
sink owns the path; other readers (analytics while the sink runs) go through that process or
wait for it (see README). Calls are blocking: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from inboxstream.core.settings import ClickHouseSettings
from inboxstream.sinks.avro_insert import AvroProjection, Buffer, write_pieces
from inboxstream.sinks.columns import ColumnType, arrow_table, column_type, columns_of
from inboxstream.sinks.exceptions import BadRowError, ClickHouseError, PathLockedError

#: Where containers for the engine are written: memory when the machine has it.
_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
_FD_PATHS = os.path.isdir("/proc/self/fd")


@contextmanager
def _scratch_file() -> Iterator[tuple[IO[bytes], str]]:
    """A scratch file and the path the engine opens it by: unnamed (it goes with the last
    descriptor, whatever ends the process) where /proc gives a path to a descriptor."""
    if _FD_PATHS:
        with tempfile.TemporaryFile(dir=_SCRATCH) as f:
            yield f, f"/proc/self/fd/{f.fileno()}"
    else:
        with tempfile.NamedTemporaryFile(dir=_SCRATCH, prefix="inboxstream-", suffix=".avro") as f:
            yield f, f.name


# ClickHouse error names that mean "this data", not "this server": the same rows would fail
# again, so the sink isolates and dead-letters them instead of waiting.
_DATA_ERRORS = (
    "CANNOT_PARSE",
    "TYPE_MISMATCH",
    "INCORRECT_DATA",
    "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    "VALUE_IS_OUT_OF_RANGE",
    "ARGUMENT_OUT_OF_BOUND",
    "TOO_LARGE_STRING_SIZE",
    "DECIMAL_OVERFLOW",
    "CANNOT_CONVERT_TYPE",
    "ILLEGAL_TYPE_OF_ARGUMENT",
)


def insert_error(backend: str, exc: Exception) -> ClickHouseError:
    """Classify a failed INSERT: bad data is BadRowError; anything else (table missing,
    read-only, server down) is a retriable outage the sink waits out."""
    text = str(exc)
    if any(code in text for code in _DATA_ERRORS):
        return BadRowError(f"ClickHouse ({backend}) refused the row: {text[:500]}")
    return ClickHouseError(f"ClickHouse ({backend}): {text[:500]}", retriable=True)


@runtime_checkable
class AvroInserter(Protocol):
    """A backend that reads Avro containers itself (the embedded engine)."""

    def insert_avro(self, projection: AvroProjection, data: Sequence[Buffer]) -> list[int]: ...


class ClickHouse(Protocol):
    """What the sinks and the analytics need from ClickHouse."""

    database: str

    def command(self, sql: str) -> None: ...

    def query(self, sql: str) -> list[dict[str, Any]]: ...

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        """The engine's own output in ``fmt`` (CSVWithNames, Parquet, ...): for exports."""
        ...

    def close(self) -> None: ...


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        # DateTime64(3, 'UTC') columns parse this text exactly on both backends.
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot write {type(value).__name__} to ClickHouse")


def json_each_row(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(
        json.dumps(row, default=_json_default, ensure_ascii=False) + "\n" for row in rows
    ).encode()


def parse_json_each_row(raw: bytes) -> list[dict[str, Any]]:
    """Rows of a JSONEachRow answer. A String column may hold bytes that are not UTF-8 (a
    byte-wise substring cut a character in two): show U+FFFD there rather than fail it all."""
    return [json.loads(line) for line in raw.decode(errors="replace").split("\n") if line.strip()]


def _result_bytes(result: Any) -> bytes:
    """A chDB query result as the engine's own output bytes."""
    return bytes(result.bytes()) if hasattr(result, "bytes") else str(result).encode()


def _refuse_if_locked(path: Path) -> None:
    """ClickHouse holds an flock on ``<path>/status`` while a process has the path open; chDB
    reports a second opener only as a vague initialisation error, so probe the lock first."""
    status = path / "status"
    if not status.exists():
        return
    with status.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PathLockedError(
                f"the embedded ClickHouse at {path} is open in another process (the sink owns "
                "it while it runs); analytics reach it through the sink's query endpoint"
            ) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


class _EmbeddedEngine:
    """The one chDB engine of this process. chDB allows a single data path per process, so
    every handle shares it; a second path is refused with a clear error, not a crash."""

    _instance: _EmbeddedEngine | None = None
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        from chdb import session  # imported lazily: it is a large native module

        self.path = path
        self.lock = threading.Lock()
        self._reader: Any = None
        path.mkdir(parents=True, exist_ok=True)
        _refuse_if_locked(path)
        try:
            self.session = session.Session(str(path))
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise PathLockedError(
                    f"the embedded ClickHouse at {path} is open in another process; stop it "
                    "(or point clickhouse.path elsewhere) and try again"
                ) from exc
            raise ClickHouseError(f"cannot open embedded ClickHouse at {path}: {exc}") from exc

    def reader(self) -> Any:
        """A second connection to the same path with ClickHouse's ``readonly = 1``: what the
        read paths use (sinks/readonly.py). It sees the writer's data at once."""
        with self.lock:
            if self._reader is None:
                from chdb import session

                self._reader = session.Session(f"{self.path}?readonly=1")
            return self._reader

    @classmethod
    def get(cls, path: Path) -> _EmbeddedEngine:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls(path.resolve())
                # chDB's engine must be shut down while the interpreter is whole: left to the
                # process's teardown, its global context sometimes crashed on exit (SIGSEGV
                # after "ShutdownTablesThreadPool is not initialized"), failing a clean run.
                atexit.register(cls.shutdown)
            elif cls._instance.path != path.resolve():
                raise ClickHouseError(
                    f"this process already has the embedded ClickHouse open at "
                    f"{cls._instance.path}; chDB allows one path per process, not also {path}"
                )
            return cls._instance

    @classmethod
    def shutdown(cls) -> None:
        with cls._guard:
            if cls._instance is not None:
                with cls._instance.lock:
                    if cls._instance._reader is not None:
                        cls._instance._reader.close()
                    cls._instance.session.close()
                cls._instance = None


class EmbeddedClickHouse:
    """chDB at a path on disk, addressing one database. Handles are cheap; they share the
    process's single engine, so a test can use a fresh database per test on one path."""

    def __init__(self, path: Path, database: str) -> None:
        self.database = database
        self._engine = _EmbeddedEngine.get(path)
        self._types: dict[str, list[tuple[str, ColumnType | None]]] = {}

    @classmethod
    def open(cls, path: Path, database: str) -> EmbeddedClickHouse:
        return cls(path, database)

    @property
    def path(self) -> Path:
        return self._engine.path

    def _run(self, sql: str, fmt: str = "CSV", *, inserting: bool = False) -> Any:
        with self._engine.lock:
            try:
                return self._engine.session.query(sql, fmt)
            except Exception as exc:
                if inserting:
                    raise insert_error("embedded", exc) from exc
                raise ClickHouseError(f"ClickHouse (embedded): {exc}") from exc

    def command(self, sql: str) -> None:
        self._run(sql)

    def query(self, sql: str) -> list[dict[str, Any]]:
        return parse_json_each_row(self.query_bytes(sql))

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        return _result_bytes(self._run(sql, fmt))

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Columnar: the batch becomes one Arrow table that the engine's ``Python()`` table
        function reads in place (no text to write and parse per row). A table with a column
        type the converter does not map still goes as text."""
        if not rows:
            return
        types = self._insert_types(table, rows[0])
        if types is None:
            self.insert_text(table, rows)
            return
        names = ", ".join(f"`{c.name}`" for c in types)
        # chDB's Python() finds the table by this local variable's name in the caller's frame.
        _inboxstream_rows = arrow_table(rows, types)  # noqa: F841 - read by name
        try:
            self._run(
                f"INSERT INTO {self.database}.`{table}` ({names}) "
                f"SELECT {names} FROM Python(_inboxstream_rows)",
                inserting=True,
            )
        except ClickHouseError:
            self._types.pop(table, None)  # a migration may have changed the table: re-read
            raise

    def insert_avro(self, projection: AvroProjection, data: Sequence[Buffer]) -> list[int]:
        """Insert an Avro container's records (in pieces, ``avro_insert.container``) through
        the projection's SQL; return the positions of the records it leaves to the Python
        mapping. The engine reads the container from a scratch file in memory (/dev/shm
        where there is one).

        The file has no name where /proc is mounted: the engine runs in this process and
        reads it as ``/proc/self/fd/N``. A named file outlived a sink killed mid-insert
        (kill -9, the OOM killer), and in /dev/shm that is memory nobody frees."""
        with _scratch_file() as (f, path):
            write_pieces(f.fileno(), data)  # unbuffered: the engine opens its own descriptor
            source = f"file('{path}', 'Avro')"
            check = projection.left_to_python_sql(source)
            left = [int(r["i"]) for r in self.query(check)] if check else []
            self._run(projection.insert_sql(self.database, source), inserting=True)
        return left

    def insert_text(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """The same rows as JSONEachRow text: the path for column types the converter does
        not map, and the reference the columnar path is tested against."""
        payload = json_each_row(rows).decode()
        self._run(
            f"INSERT INTO {self.database}.{table} FORMAT JSONEachRow\n{payload}", inserting=True
        )

    def _insert_types(self, table: str, row: Mapping[str, Any]) -> list[ColumnType] | None:
        if table not in self._types:
            columns = self.query(
                "SELECT name, type FROM system.columns WHERE database = "
                f"'{self.database}' AND table = '{table}' "
                "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS', 'EPHEMERAL')"
            )
            self._types[table] = [(c["name"], column_type(c["name"], c["type"])) for c in columns]
        # the row's own keys that are columns of the table, as the text path would insert
        wanted = [(name, t) for name, t in self._types[table] if name in row]
        if not wanted or any(t is None for _, t in wanted):
            return None
        return [t for _, t in wanted if t is not None]

    def close(self) -> None:
        """Release the engine so another process may open the path."""
        _EmbeddedEngine.shutdown()

    def reader(self) -> EmbeddedReader:
        """This engine through its read-only connection (wrap it in ``ReadOnlyClickHouse``)."""
        return EmbeddedReader(self._engine, self.database)


class EmbeddedReader:
    """Queries on the engine's ``readonly = 1`` connection; the read paths' chDB backend."""

    def __init__(self, engine: _EmbeddedEngine, database: str) -> None:
        self.database = database
        self._engine = engine

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        try:
            result = self._engine.reader().query(sql, fmt)
        except Exception as exc:
            raise ClickHouseError(f"ClickHouse (embedded): {exc}") from exc
        return _result_bytes(result)

    def close(self) -> None:
        """Nothing of its own to release: the engine closes both connections."""


class ServerClickHouse:
    """A ClickHouse server through clickhouse-connect (HTTP)."""

    def __init__(self, url: str, database: str, *, read_only: bool = False) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

        self.database = database
        self._driver_error = DriverError
        # The read paths send ClickHouse's readonly = 1 with every statement (sinks/readonly.py).
        self._settings: dict[str, Any] = {"readonly": 1} if read_only else {}
        try:
            self._client = clickhouse_connect.get_client(dsn=url)
        except DriverError as exc:
            # The DSN may carry a password: name the failure, never the URL.
            raise ClickHouseError(
                f"cannot reach the ClickHouse server: {type(exc).__name__}", retriable=True
            ) from None

    def _wrap(self, exc: Exception) -> ClickHouseError:
        retriable = "Connection" in type(exc).__name__ or "timed out" in str(exc)
        return ClickHouseError(f"ClickHouse (server): {exc}", retriable=retriable)

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except self._driver_error as exc:
            raise self._wrap(exc) from exc

    def query(self, sql: str) -> list[dict[str, Any]]:
        # JSONEachRow through the raw path keeps types identical to the embedded backend.
        return parse_json_each_row(self.query_bytes(sql))

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        try:
            return bytes(self._client.raw_query(sql, fmt=fmt, settings=self._settings or None))
        except self._driver_error as exc:
            raise self._wrap(exc) from exc

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Columnar, in clickhouse-connect's Native format: one list per column, named, the
        types taken from the server's table (no text to parse on either side)."""
        if not rows:
            return
        names = list(rows[0])
        try:
            self._client.insert(
                f"{self.database}.{table}",
                list(columns_of(rows, names).values()),
                column_names=names,
                column_oriented=True,
            )
        except self._driver_error as exc:
            raise insert_error("server", exc) from exc
        except (TypeError, ValueError, OverflowError) as exc:  # a value the column cannot hold
            raise BadRowError(f"ClickHouse (server) refused the row: {exc}"[:500]) from exc

    def close(self) -> None:
        self._client.close()


def connect(settings: ClickHouseSettings) -> ClickHouse:
    """The backend the settings ask for: a server when ``url`` is set, else embedded chDB."""
    if settings.url is not None:
        return ServerClickHouse(settings.url.get_secret_value(), settings.database)
    return EmbeddedClickHouse.open(settings.path, settings.database)

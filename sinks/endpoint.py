"""Reading an embedded ClickHouse that another process owns.

chDB lets one process open a data path. The sink is that process: it must keep writing while
people ask questions. So while ``inboxstream sink run`` holds the path it also serves a small
read-only query endpoint on loopback, and readers (``inboxstream analytics``, ``query``) that
find the path taken send their SELECTs there instead of opening it.

The endpoint is advertised in ``<path>/sink-endpoint.json`` (pid, port and a random token; mode
0600, so only the owning user can read the token). It binds 127.0.0.1 only, checks the token
on every request, and runs statements through ``sinks/readonly.py`` (ClickHouse's own
``readonly`` and parser; the regex below only turns obvious writes away early); its answers
are the engine's own bytes in the format asked for (JSONEachRow, CSV, Parquet), so a remote
read and a local read are byte-identical.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from inboxstream.core.lifetime import pid_alive
from inboxstream.core.settings import ClickHouseSettings
from inboxstream.sinks.clickhouse import (
    ClickHouse,
    EmbeddedClickHouse,
    ServerClickHouse,
    parse_json_each_row,
)
from inboxstream.sinks.exceptions import ClickHouseError
from inboxstream.sinks.readonly import ReadOnlyClickHouse, ReadOnlyError

log = logging.getLogger(__name__)

ENDPOINT_FILE = "sink-endpoint.json"
FORMATS = ("JSONEachRow", "CSVWithNames", "Parquet")
_READ_ONLY = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_MAX_SQL = 1_000_000


def is_read_only(sql: str) -> bool:
    """A single read statement: after comments, starts with a read keyword; and no ``;``
    anywhere but at the very end (not even in a comment or a string: it errs on refusing)."""
    if ";" in sql.strip().removesuffix(";"):
        return False
    body = _BLOCK_COMMENT.sub(" ", sql)
    body = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
    return bool(_READ_ONLY.match(body.strip()))


@dataclass(frozen=True)
class EndpointInfo:
    pid: int
    port: int
    token: str

    @classmethod
    def read(cls, path: Path) -> EndpointInfo | None:
        try:
            data = json.loads((path / ENDPOINT_FILE).read_text())
            return cls(int(data["pid"]), int(data["port"]), str(data["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """The advertising process still exists (a kill -9 leaves a stale file behind)."""
        return pid_alive(self.pid)


class QueryEndpoint:
    """The owner's side: serve read-only queries against this process's embedded engine."""

    def __init__(self, clickhouse: EmbeddedClickHouse) -> None:
        self._ch = clickhouse
        self._reads = ReadOnlyClickHouse(clickhouse.reader())
        self._token = secrets.token_urlsafe(24)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._file = clickhouse.path / ENDPOINT_FILE

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> QueryEndpoint:
        self._thread.start()
        tmp = self._file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "port": self.port, "token": self._token}, handle)
        tmp.replace(self._file)  # readers never see half a file
        log.info("serving read-only queries for %s on 127.0.0.1:%d", self._ch.path, self.port)
        return self

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file.unlink()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> QueryEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("query endpoint: " + format, *args)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
                given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not hmac.compare_digest(given.encode(), endpoint._token.encode()):
                    self._reply(403, b"bad token")
                    return
                fmt = self.headers.get("X-Format", "JSONEachRow")
                length = int(self.headers.get("Content-Length", "0"))
                if fmt not in FORMATS or not 0 < length <= _MAX_SQL:
                    self._reply(400, b"bad format or size")
                    return
                sql = self.rfile.read(length).decode("utf-8", "replace")
                if not is_read_only(sql):
                    self._reply(400, b"only one read statement (SELECT, WITH, SHOW, ...)")
                    return
                try:
                    body = endpoint._reads.query_bytes(sql, fmt)
                except ReadOnlyError as exc:
                    self._reply(400, str(exc).encode())
                    return
                except ClickHouseError as exc:
                    self._reply(500, str(exc).encode())
                    return
                self._reply(200, body)

        return Handler


class RemoteEmbeddedClickHouse:
    """The reader's side: a ClickHouse handle that sends read statements to the owner."""

    def __init__(self, info: EndpointInfo, database: str, timeout_s: float = 120.0) -> None:
        self.database = database
        self._info = info
        self._timeout = timeout_s

    def query_bytes(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self._info.port}/query",
            data=sql.encode(),
            headers={"Authorization": f"Bearer {self._info.token}", "X-Format": fmt},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise ClickHouseError(f"ClickHouse (via the sink): {detail}") from None
        except OSError as exc:
            raise ClickHouseError(
                f"the sink's query endpoint did not answer: {exc}", retriable=True
            ) from None

    def query(self, sql: str) -> list[dict[str, Any]]:
        return parse_json_each_row(self.query_bytes(sql))

    def command(self, sql: str) -> None:
        raise ClickHouseError(
            "the sink owns the embedded ClickHouse; through it only reads are allowed "
            "(stop the sink to migrate or purge)"
        )

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.command("INSERT")

    def close(self) -> None:
        """Nothing to release: the owner keeps the engine."""


def connect_for_reading(settings: ClickHouseSettings) -> ClickHouse:
    """A read-only handle (sinks/readonly.py) for the people's read paths. A server is shared,
    so just connect. An embedded path that a running sink owns is read through that sink's query
    endpoint (which runs the same checks); a free path is opened here."""
    if settings.url is not None:
        server = ServerClickHouse(
            settings.url.get_secret_value(), settings.database, read_only=True
        )
        return ReadOnlyClickHouse(server)
    info = EndpointInfo.read(settings.path)
    if info is not None and info.alive():
        remote = RemoteEmbeddedClickHouse(info, settings.database)
        try:
            remote.query("SELECT 1")
            return remote
        except ClickHouseError:
            pass  # a stale file (the pid was reused): the path may well be free
    return ReadOnlyClickHouse(EmbeddedClickHouse.open(settings.path, settings.database).reader())

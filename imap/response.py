"""A linear reader for IMAP responses, replacing two hot spots of aioimaplib 2.0.

aioimaplib's ``_handle_responses`` recurses once per line of each chunk it receives and copies
the rest of the chunk at every line, and ``FetchCommand.wait_data`` rescans the whole response
so far on every line. A UID FETCH of n messages therefore costs O(n^2) and, with many short
lines in one read, raises RecursionError (bench/imap_fetch_batch.py measures both). The two
functions here keep aioimaplib's exact semantics (the same Command objects, the same
``IncompleteRead`` hand-over between reads) with a loop over an index and a running
parenthesis balance, so a FETCH costs O(bytes) whatever the batch size.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from aioimaplib import aioimaplib

_CRLF = b"\r\n"
_FETCH_START_RE = re.compile(rb"[0-9]+ FETCH \(")
_LITERAL_RE = re.compile(rb"\{(\d+)\}$")

LineHandler = Callable[[bytes, Any], Any]


class FastFetchCommand(aioimaplib.FetchCommand):  # type: ignore[misc]
    """A FETCH whose "is this message's data complete?" check is O(1) per line.

    aioimaplib counts the parentheses of every text line since the last ``n FETCH (`` line
    (literals excluded) each time a line arrives; we keep that count as we go.
    """

    def __init__(
        self,
        tag: str,
        *args: str,
        prefix: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float | None = None,
    ) -> None:
        self._balance = 0
        super().__init__(tag, *args, prefix=prefix, loop=loop, timeout=timeout)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        # Literal data arrives as a bytearray and is excluded, as in aioimaplib.
        if type(line) is bytes:
            if _FETCH_START_RE.match(line):
                self._balance = 0
            self._balance += line.count(b"(") - line.count(b")")
        super().append_to_resp(line, result)

    def wait_data(self) -> bool:
        return self._balance != 0

    # aioimaplib's inactivity timeout cancels and re-creates a timer handle on every line and
    # every literal (a tenth of a backfill's reading time). Here each line only notes the
    # time; the one timer, when it fires, re-arms itself for the rest of the quiet period, so
    # the command still times out exactly ``timeout`` seconds after the server last spoke.
    def _set_timer(self) -> None:
        self._last_activity = self._loop.time()
        if self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._check_quiet)

    def _reset_timer(self) -> None:
        self._last_activity = self._loop.time()

    def _check_quiet(self) -> None:
        quiet = self._loop.time() - self._last_activity
        if quiet >= self._timeout:
            self._timeout_callback()
        else:
            self._timer = self._loop.call_later(self._timeout - quiet, self._check_quiet)


def handle_responses(
    protocol: Any,
    data: bytes,
    line_handler: LineHandler,
    current_cmd: Any = None,
) -> None:
    """aioimaplib's ``IMAP4ClientProtocol._handle_responses`` as a loop over an index."""
    pos = 0
    end = len(data)
    while True:
        if pos >= end:
            if protocol.pending_sync_command is not None:
                protocol.pending_sync_command.flush()
            if current_cmd is not None and current_cmd.wait_data():
                raise aioimaplib.IncompleteRead(current_cmd)
            return
        if current_cmd is not None and current_cmd.wait_literal_data():
            need = current_cmd._expected_size - len(current_cmd._resp_literal_data)
            current_cmd.append_literal_data(data[pos : pos + need])
            pos = min(end, pos + need)
            if current_cmd.wait_literal_data():
                raise aioimaplib.IncompleteRead(current_cmd)
            if pos >= end:
                # The line after the literal has not arrived yet: keep the command current.
                raise aioimaplib.IncompleteRead(current_cmd, b"")
        eol = data.find(_CRLF, pos)
        if eol < 0:
            raise aioimaplib.IncompleteRead(current_cmd, data[pos:])
        line = data[pos:eol]
        pos = eol + 2
        cmd = line_handler(line, current_cmd)
        literal = _LITERAL_RE.search(line)
        if literal:
            if cmd is None:
                cmd = aioimaplib.Command("NIL", "unused")
            cmd.begin_literal_data(int(literal.group(1)))
            current_cmd = cmd
        elif cmd is not None and cmd.wait_data():
            current_cmd = cmd
        else:
            current_cmd = None

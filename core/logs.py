"""Log output for people (text) or for log collectors (JSON, one object a line).

The JSON form carries the record's own fields as keys: ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``message``, and ``inbox`` / ``folder`` when the code
that logged named them (``extra={"inbox": ..., "folder": ...}``); an exception's traceback as
``exc``. Messages are the same as in the text form, which never contain a secret.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes a log call may add through ``extra`` that the JSON form keeps as keys.
CONTEXT_FIELDS = ("inbox", "folder")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, fmt: LogFormat = "text") -> None:
    """The root logger's level and format (replacing what was set before)."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

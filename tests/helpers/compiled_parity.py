"""What the compiled parse modules and their sources must agree on, run in either build.

``tests/unit/test_compiled.py`` computes ``outputs`` in its own process (compiled) and in a
second interpreter started with ``INBOXSTREAM_PURE_PYTHON=1`` (the sources), which runs
``python -m tests.helpers.compiled_parity``: the corpus on stdin, the records on stdout.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inboxstream._compiled import PURE_ENV
from inboxstream.app.mailgen import generate_mailbox
from inboxstream.producers.parse import FetchedMessage, parse_records
from tests.helpers.hostile import hostile_corpus

NOW = datetime(2026, 12, 2, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def run_from_source(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``python *args`` in a second interpreter that runs the compiled modules' sources
    (``INBOXSTREAM_PURE_PYTHON=1``), from the repository root; it must exit 0."""
    env = os.environ | {PURE_ENV: "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, check=True, cwd=REPO, env=env, **kwargs
    )


def corpus() -> list[bytes]:
    """The generator's mailbox and every hostile kind. Made once, by the caller: the
    generator's Message-IDs are random, so the second interpreter gets these very bytes."""
    raws = [m.raw for m in itertools.islice(generate_mailbox("me@x.test", threads=60), 300)]
    return raws + hostile_corpus()


def outputs(raws: list[bytes]) -> bytes:
    """The records of both parser paths over the corpus, pickled: what each build makes."""
    messages = [
        FetchedMessage("me@x.test", "INBOX", "inbox", 7, uid, raw, ("\\Seen",), NOW, len(raw), uid)
        for uid, raw in enumerate(raws, 1)
    ]
    records = [parse_records(m, now=NOW, fast=fast) for m in messages for fast in (True, False)]
    return pickle.dumps(records)


def main() -> None:
    sys.stdout.buffer.write(outputs(pickle.loads(sys.stdin.buffer.read())))


if __name__ == "__main__":
    main()

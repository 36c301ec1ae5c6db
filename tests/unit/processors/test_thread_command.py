"""``inboxstream thread FILE`` on a nasty generated mbox: every message exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from inboxstream.app.cli import main
from tests.helpers.hostile import hostile_corpus
from tests.helpers.mailboxes import to_mbox, tricky_mailbox

NASTY = [
    b"\x00\xff\xfe binary garbage with no headers at all\n\n\x80\x81",
    b"Subject: =?bogus-charset?q?=FF=FE?=\nMessage-ID: <nasty1@x>\n"
    b"References: <<<>>> <nasty0@x\n\n",
    b"Message-ID: no brackets here@x\nIn-Reply-To: nasty1@x\nSubject: Re: \xff\xfe latin\n\n",
    b"Message-ID: <nasty1@x>\nSubject: duplicate of nasty1\n\nFrom the body, a From line\n",
    b"",
    b"Subject: " + b"x" * 5000 + b"\nReferences: " + b"<r@x> " * 500 + b"\n\nlong\n",
]


def run(path: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["thread", *args, str(path)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_nasty_mbox_every_message_exactly_once(tmp_path: Path) -> None:
    mails, rfc, refs_only = tricky_mailbox()
    raws = [m.raw for m in mails] + NASTY
    path = tmp_path / "nasty.mbox"
    path.write_bytes(to_mbox(raws))
    labels = [m.label for m in mails] + [f"n{i}" for i in range(len(NASTY))]
    for algorithm, expected in (("rfc5256", rfc), ("references", refs_only)):
        threads = run(path, "--algorithm", algorithm)
        indexes = [m["index"] for t in threads for m in t["messages"]]
        assert sorted(indexes) == list(range(len(raws)))
        groups = {frozenset(labels[m["index"]] for m in t["messages"]) for t in threads}
        # the tricky part groups exactly as RFC 5256 says, untouched by the garbage after it
        assert {frozenset(e) for e in expected} <= groups
        assert len({t["thread_id"] for t in threads}) == len(threads)
    by_index = {m["index"]: m for t in run(path) for m in t["messages"]}
    assert by_index[len(mails) + 1]["message_id"] == "nasty1@x"
    # the duplicate keeps its id in the output but threads on its own
    assert by_index[len(mails) + 3]["message_id"] == "nasty1@x"
    assert by_index[len(mails)]["message_id"] is None
    # lenient: bracket-less In-Reply-To still links n2 to n1
    n1_thread = next(
        t
        for t in run(path, "--algorithm", "references")
        if any(m["index"] == len(mails) + 1 for m in t["messages"])
    )
    assert {m["index"] for m in n1_thread["messages"]} >= {len(mails) + 1, len(mails) + 2}


def test_empty_mbox_prints_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.mbox"
    path.write_bytes(b"")
    assert run(path) == []


def test_absurd_dates_never_break_threading() -> None:
    """A zone offset or year too big for the stdlib raised OverflowError out of the offline
    command; the date is dropped instead, as the producers drop it."""
    from inboxstream.processors.mbox import thread_input_from_bytes

    for date in (
        b"Mon, 1 Jan 2020 00:00:00 +99999999999999999999",
        b"Mon, 1 Jan 99999999999999999999 00:00:00 +0000",
    ):
        raw = b"Message-ID: <a@b>\r\nDate: " + date + b"\r\nSubject: x\r\n\r\nbody\r\n"
        parsed = thread_input_from_bytes(0, raw)
        assert parsed.message_id == "a@b"
        assert parsed.date is None


def test_the_hostile_corpus_threads_with_no_traceback(tmp_path: Path) -> None:
    """10,000 References, 1,000-deep MIME, MB headers, cycles: each message exactly once."""
    raws = hostile_corpus()
    path = tmp_path / "hostile.mbox"
    path.write_bytes(to_mbox(raws))
    for algorithm in ("rfc5256", "references"):
        threads = run(path, "--algorithm", algorithm)
        indexes = [m["index"] for t in threads for m in t["messages"]]
        assert sorted(indexes) == list(range(len(raws)))

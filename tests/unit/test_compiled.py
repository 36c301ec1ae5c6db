"""The mypyc-compiled modules: built, used, equal to their sources, never run stale.

The parity test is the one that matters: mypyc runs the same source, but it checks the
annotations at run time, so an annotation that lies (a stub saying ``str`` where compat32 hands
back a ``Header``) changes what a hostile message produces. The sources, run in a second
interpreter with ``INBOXSTREAM_PURE_PYTHON=1``, are the oracle over the generator's mailbox
and the hostile corpus, both parser paths, field by field.
"""

from __future__ import annotations

import gc
import importlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from inboxstream import _compiled
from inboxstream.producers.parse import FetchedMessage, parse_records
from tests.helpers import processor_parity
from tests.helpers.compiled_parity import NOW, corpus, outputs, run_from_source


def test_the_compiled_modules_are_built_and_in_use() -> None:
    """./run builds them: a set-up that silently skipped mypyc would run 35% slower."""
    for name in _compiled.MODULES:
        module = importlib.import_module(name)
        assert _compiled.is_compiled(module), f"{name} runs from {module.__file__}"


def test_compiled_and_source_give_the_same_records() -> None:
    raws = corpus()
    here = outputs(raws)
    pure = run_from_source("-m", "tests.helpers.compiled_parity", input=pickle.dumps(raws))
    mine, theirs = pickle.loads(here), pickle.loads(pure.stdout)
    assert len(mine) == len(theirs) > 600
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a == b, f"message {i // 2 + 1}, fast={i % 2 == 0}"


def test_compiled_and_source_process_alike() -> None:
    """The record path, compiled and from source, over a hostile scenario and a workload of
    shares: the same events, changelog writes, bytes to send, failures and counts."""
    here = processor_parity.outputs()
    pure = run_from_source("-m", "tests.helpers.processor_parity")
    (engine, record_path), (engine_src, record_path_src) = (
        pickle.loads(here),
        pickle.loads(pure.stdout),
    )
    for algorithm, mine, theirs in zip(("rfc5256", "references"), engine, engine_src, strict=True):
        events, changelog, counts, reads, threads = mine
        assert len(events) > 500 and len(changelog) > 500 and reads > 0, algorithm
        parts = ("events", "changelog", "counts", "reads", "threads")
        for what, a, b in zip(parts, mine, theirs, strict=True):
            assert a == b, f"{algorithm}: {what} differ"
    shares, _ = record_path
    assert sum(len(out[0]) for out in shares) > 1000 and any(out[1] for out in shares)
    assert record_path == record_path_src


def _cyclic_garbage(work: Callable[[], object]) -> list[str]:
    """The types of what ``work`` left for the cyclic collector (with it off meanwhile)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        return sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def test_the_hot_paths_leave_no_cyclic_garbage() -> None:
    """What one message's parse and one share's processing allocate is freed by reference
    counting, in the compiled build. mypyc makes nested functions and the environment they
    share one reference cycle: ``parse_records`` once had five, and every message's whole
    parse waited for the collector, which took 20-40% of a parse worker's CPU."""
    messages = [
        FetchedMessage("me@x.test", "INBOX", "inbox", 7, uid, raw, (), NOW, len(raw), uid)
        for uid, raw in enumerate(corpus(), 1)
    ]

    def parse_all() -> None:
        for message in messages:
            for fast in (True, False):
                parse_records(message, now=NOW, fast=fast)

    assert _cyclic_garbage(parse_all) == []
    assert _cyclic_garbage(processor_parity.outputs) == []


def test_the_pure_switch_loads_the_sources() -> None:
    script = (
        "import inboxstream.producers.parse as p; from inboxstream._compiled import is_compiled;"
        "print(is_compiled(p), p.__file__)"
    )
    out = run_from_source("-c", script, text=True)
    assert out.stdout.startswith("False ") and out.stdout.strip().endswith("parse.py")


def test_a_changed_source_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "manifest.json"
    monkeypatch.setattr(_compiled, "MANIFEST", manifest)
    assert _compiled._stale() == "no build recorded"
    hashes = _compiled.source_hashes()
    manifest.write_text(json.dumps(hashes))
    assert _compiled._stale() is None
    manifest.write_text(json.dumps(hashes | {"inboxstream.mail.mime": "0" * 64}))
    assert _compiled._stale() == "sources changed since the build: inboxstream.mail.mime"
    spec = _compiled._SourceFirst().find_spec("inboxstream.mail.mime", None)
    assert spec is not None and spec.origin is not None and spec.origin.endswith("mime.py")
    assert _compiled._SourceFirst().find_spec("inboxstream.core.kafka", None) is None

"""The modules compiled to C with mypyc, and the guard that keeps a stale build from running.

Two hot paths spend their time in plain Python, and mypyc compiles their typed modules as
they are, so the same source runs as C:

* a backfill's parse workers: MIME structure, header fields, addresses and dates, record
  building (``producers/parse.py`` and the ``mail`` modules under it); 77 us a message
  against 105 us in the interpreter on the benchmark corpus (``bench/backfill.py``);
* the stream processor's record path: threading, the engine, state and its records, decoding
  and encoding around them (``processors/``); 18.6-19.1 us an input event against 31.5-34.7
  (``bench/engine_cpu.py``, with the changes that came with it: see the README).

``setup.py`` builds them; ``./run`` rebuilds when they change.

A compiled module is an extension next to its ``.py``, and Python imports the extension
first: an edited source would silently run as its old build. So ``setup.py`` records each
source's hash beside the build, and ``install`` (called when ``inboxstream`` is imported)
loads all of them from source, with a warning, when any hash differs or no build was
recorded. ``INBOXSTREAM_PURE_PYTHON=1`` does the same on purpose: to compare the two, or to
rule the compiled code out of a problem. All or none: the compiled modules call each other
natively, so one of them from source and the rest compiled would still run the old code.

No imports beyond the standard library: ``setup.py`` reads this file before anything is
installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: Each group is one shared library (``inboxstream/<group>__mypyc*.so``) compiled together, so
#: its modules call each other natively; dependencies first (the order is only for reading).
#: Two groups, so a parse worker maps only the parser's code.
GROUPS = {
    "inboxstream._parse_native": (
        "inboxstream.mail.limits",
        "inboxstream.mail.headers",
        "inboxstream.mail.automatic",
        "inboxstream.mail.mime",
        "inboxstream.producers.parse",
        "inboxstream.producers.encode",
    ),
    # The stream processor's record path (bench/engine_cpu.py). Not jwz: its generic
    # dataclasses do not compile, and only the offline batch threading and tests run it.
    "inboxstream._processor_native": (
        "inboxstream.processors.subject",
        "inboxstream.processors.references",
        "inboxstream.processors.retention",
        "inboxstream.processors.matcher",
        "inboxstream.processors.indexes",
        "inboxstream.processors.assign",
        "inboxstream.processors.records",
        "inboxstream.processors.inputs",
        "inboxstream.processors.incremental",
        "inboxstream.processors.state",
        "inboxstream.processors.engine",
        "inboxstream.processors.record_path",
    ),
}
MODULES = tuple(module for modules in GROUPS.values() for module in modules)
PACKAGE_DIR = Path(__file__).resolve().parent
#: Written by setup.py when it compiles: module -> sha256 of the source it compiled.
MANIFEST = PACKAGE_DIR / "_compiled_sources.json"
PURE_ENV = "INBOXSTREAM_PURE_PYTHON"


def source_path(module: str) -> Path:
    """The ``.py`` of one of ``MODULES`` (through the package's folder links)."""
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_hashes() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in MODULES}


def is_compiled(module: ModuleType) -> bool:
    """Whether an imported module is the compiled extension, not its source."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' sources before the extensions next to them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def _stale() -> str | None:
    """Why the build must not run, or None when it matches the sources."""
    try:
        built = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "no build recorded"
    changed = [m for m, digest in source_hashes().items() if built.get(m) != digest]
    return f"sources changed since the build: {', '.join(changed)}" if changed else None


def install() -> None:
    if any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        return
    reason = "asked for" if os.environ.get(PURE_ENV) == "1" else _stale()
    if reason is None:
        return
    if reason.startswith("sources changed"):  # asked for, or no build: nothing to warn about
        warnings.warn(
            f"inboxstream: compiled modules not used ({reason}); running the sources, "
            "slower. Rebuild with ./run setup.",
            RuntimeWarning,
            stacklevel=2,
        )
    sys.meta_path.insert(0, _SourceFirst())

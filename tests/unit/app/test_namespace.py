"""Installed code claims one top-level name: a folder holding its own ``schemas/``,
``sinks/``, ``producers/``... packages does not shadow ours."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.mailboxes import to_mbox, tricky_mailbox

CLI = str(Path(sys.executable).with_name("inboxstream"))
GENERIC = ("schemas", "sinks", "producers", "processors", "runtime", "infra", "core", "app")


def _hostile_folder(tmp_path: Path) -> Path:
    for name in GENERIC:
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name}')\n")
    return tmp_path


def test_commands_work_from_a_folder_with_generic_packages(tmp_path: Path) -> None:
    folder = _hostile_folder(tmp_path)
    mails, _, _ = tricky_mailbox()
    (folder / "box.mbox").write_bytes(to_mbox([m.raw for m in mails]))
    env = {"PATH": str(Path(sys.executable).parent), "INBOXSTREAM_HOME": str(tmp_path / "h")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=60)

    helped = run(CLI, "--help")
    assert helped.returncode == 0 and "thread" in helped.stdout, helped.stderr
    threaded = run(CLI, "thread", "box.mbox")
    assert threaded.returncode == 0, threaded.stderr
    indexes = [
        m["index"] for line in threaded.stdout.splitlines() for m in json.loads(line)["messages"]
    ]
    assert sorted(indexes) == list(range(len(mails)))
    # python -m from that folder: cwd is first on sys.path, and still nothing is shadowed
    module = run(sys.executable, "-m", "inboxstream", "thread", "--help")
    assert module.returncode == 0 and "mbox" in module.stdout.lower(), module.stderr


def test_the_installed_top_level_names_are_ours_only() -> None:
    dist = md.distribution("inboxstream")
    assert (dist.read_text("top_level.txt") or "").split() == ["inboxstream"]
    # an editable install: setuptools' finder maps exactly the names it installs
    for finder in (f for f in dist.files or () if f.name.endswith("_finder.py")):
        module = importlib.import_module(Path(str(finder)).stem)
        assert set(module.MAPPING) == {"inboxstream"}

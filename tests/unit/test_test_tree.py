"""The test tree mirrors the package tree, and tests share code only through tests.helpers."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.architecture import LAYERS

TESTS = Path(__file__).resolve().parent.parent


def _test_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m == "tests" or m.startswith("tests.")}


def test_tests_import_only_the_helpers() -> None:
    offenders = {
        str(path.relative_to(TESTS)): sorted(bad)
        for path in TESTS.rglob("*.py")
        if path.parent.name != "helpers"
        and (bad := {m for m in _test_imports(path) if not m.startswith("tests.helpers")})
    }
    assert offenders == {}


def test_test_folders_are_named_for_the_packages() -> None:
    for kind in ("unit", "integration"):
        folders = {p.name for p in (TESTS / kind).iterdir() if p.is_dir() and p.name[0] != "_"}
        assert folders <= set(LAYERS), f"tests/{kind}: {sorted(folders - set(LAYERS))}"

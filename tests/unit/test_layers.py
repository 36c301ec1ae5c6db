"""The floor plan holds: layers import only downwards, and no two packages import each other.

Every ``import``/``from ... import`` in every module counts, including the lazy ones inside
functions (a cycle hidden in a function is still a cycle). The table is the one in the
README's architecture section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import inboxstream
from tests.helpers.architecture import LAYERS

ROOT = Path(inboxstream.__file__).parent


def _part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "inboxstream" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from inboxstream import app`` names the part in the alias
            if node.module == "inboxstream":
                found.update(f"inboxstream.{alias.name}" for alias in node.names)
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importer part, imported part) -> the modules where that import is written."""
    edges: dict[tuple[str, str], list[str]] = {}
    for part in LAYERS:
        files = [ROOT / f"{part}.py"] if (ROOT / f"{part}.py").exists() else []
        files += sorted((ROOT / part).rglob("*.py")) if (ROOT / part).is_dir() else []
        for path in files:
            for module in _imports(path):
                target = _part_of(module)
                if target is not None and target != part:
                    edges.setdefault((part, target), []).append(path.name)
    return edges


def test_every_part_of_the_namespace_has_a_layer() -> None:
    parts = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__main__", "__pycache__"}
    assert parts == set(LAYERS)


def test_layers_import_only_downwards() -> None:
    upward = {
        f"{a} -> {b} ({', '.join(sorted(set(where)))})": (LAYERS[a], LAYERS.get(b))
        for (a, b), where in _edges().items()
        if b not in LAYERS or LAYERS[b] >= LAYERS[a]
    }
    assert not upward, f"imports that do not point down: {sorted(upward)}"


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := cycle_from(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert (found := cycle_from(start, [])) is None, " -> ".join(found)


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from inboxstream.app import cli\n    import inboxstream.sinks.rows\n"
    )
    assert _imports(module) == {"inboxstream.app", "inboxstream.sinks.rows"}

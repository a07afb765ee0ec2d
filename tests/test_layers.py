"""The package's layers (docs/architecture.md, "Layers"): no import circle, no import that runs upward.

The import graph is built from the source with ``ast`` (every ``import purer...`` and
``from purer... import ...``, including imports inside functions and under ``TYPE_CHECKING``), so a
lazy import does not hide a circle. ``importlib`` calls with a literal module name count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "purer"

# Lowest first. A module may import modules of its own layer (without a circle) and of lower layers.
LAYERS = (
    ("base", ("errors", "config", "io", "seeding", "tracking", "hostmem", "statistics", "paths", "variants",
              "runtime", "compiler", "outputs", "runinfo", "pipeline", "arms", "grid", "manual", "purer")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("inversion", ("inversion",)),
    ("meta", ("meta",)),
    ("report", ("report", "status")),
    ("api", ("api",)),
    ("cli", ("cli", "__main__")),
)
# Within meta: the meta-test step sits above the training driver's engine; neither imports the other.
META_ORDER = ("learners", "init", "model_file", "evaluate", "calibration", "state", "engine", "checkpoint",
              "branch", "train", "meta_test")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (a ``from a import b`` of a module ``a.b`` counts as ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        for name in names:
            if name in known:
                found.add(name)
                if isinstance(node, ast.ImportFrom) and name != node.module:
                    continue
                break
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) for name, path in found.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]  # "purer" itself: the package's __init__
    for index, (_, members) in enumerate(LAYERS):
        if key in members:
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layers.py and docs/architecture.md")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)


def test_no_import_circle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_no_import_runs_upward():
    upward = [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_meta_modules_follow_their_order():
    edges = graph()
    rank = {f"purer.meta.{m}": i for i, m in enumerate(META_ORDER)}
    assert set(rank) == {n for n in edges if n.startswith("purer.meta.")}, "add new meta modules to META_ORDER"
    upward = [f"{a} imports {b}" for a in rank for b in edges[a] if b in rank and rank[b] > rank[a]]
    assert not upward, "\n".join(upward)


def test_meta_training_does_not_run_icfil_or_the_meta_test_step():
    edges = graph()
    seen, todo = set(), ["purer.cli.meta_train"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    assert "purer.meta.calibration" not in seen and "purer.meta.meta_test" not in seen
    assert "purer.variants" not in seen


def test_no_step_imports_the_command_line_entry_point():
    edges = graph()
    assert not [name for name, targets in edges.items() if "purer.cli.main" in targets and name != "purer.__main__"]


@pytest.mark.parametrize("edges, cycle", [
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_find_cycle_finds_a_circle(edges, cycle):
    assert find_cycle(edges) == cycle

"""The package's import graph, read from the source (ast, nothing imported): models and io sit below inference
and engine, and no module reaches back to one that imports it. Imports inside functions count too: they only
postpone the dependency, they do not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cdtool"
# (lower layer, layers above it that it must never import)
FORBIDDEN = [("cdtool.models", ("cdtool.inference", "cdtool.engine", "cdtool.tasks", "cdtool.cli")),
             ("cdtool.io", ("cdtool.inference", "cdtool.engine", "cdtool.tasks", "cdtool.cli", "cdtool.models"))]
# Cycles that exist today and are being taken apart; this list may only shrink. The data kinds register
# themselves by importing the registry that imports them.
KNOWN_CYCLES: list[set[str]] = []  # cycles allowed until removed; none left


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the cdtool modules it imports (a name imported from a package resolves to its submodule when
    there is one, else to the package)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.startswith("cdtool") and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read_from_every_module(graph):
    """Guards the reader itself: known edges (absolute, relative, function-local) are found."""
    assert len(graph) > 80
    assert "cdtool.models.base" in graph["cdtool.models.registry"]
    assert "cdtool.inference.detector" in graph["cdtool.engine.evaluate"]  # imported inside a function
    assert "cdtool.models.calibration" in graph["cdtool.models.cae"]


@pytest.mark.parametrize("lower,above", FORBIDDEN)
def test_lower_layers_never_import_upwards(graph, lower, above):
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if within(m, lower)
                   for t in targets if any(within(t, a) for a in above))
    assert not wrong, f"{lower} must not import {', '.join(above)}: {wrong}"


def test_no_module_imports_itself_back(graph):
    found = cycles(graph)
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"import cycles: {new}"


def test_no_cycle_between_subpackages(graph):
    """Subpackages form layers: if inference imports models, nothing in models imports inference."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert not cycles(packages), f"subpackage cycles: {cycles(packages)}"


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The same reader on a made-up package: an arrow from models up into inference, closing a cycle."""
    root = tmp_path / "cdtool"
    for folder in ("models", "inference"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "base.py").write_text("def f():\n    from cdtool.inference.run import g\n")
    (root / "inference" / "run.py").write_text("from ..models import base\n")
    g = import_graph(root)
    assert g["cdtool.models.base"] == {"cdtool.inference.run"} and g["cdtool.inference.run"] == {"cdtool.models.base"}
    assert cycles(g) == [{"cdtool.models.base", "cdtool.inference.run"}]

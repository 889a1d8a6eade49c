"""Every package imports only downward, and no module imports itself back in a circle.

Inputs: the source of the installed packages (flows, tasks, storage, deployments), read with
`ast` (nothing is imported). Fails naming the offending import (file, line) or the cycle.
Layers, lowest first; a package may import its own modules and any lower layer, never a sibling
on its own layer nor anything above it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[list[str]] = [
    ["storage", "tasks.errors", "tasks.markdown"],  # tasks.markdown: text helpers any report may use
    ["tasks.backends"],
    ["tasks.sources", "tasks.generation", "tasks.rating"],
    ["tasks.audit"],
    ["tasks.assemble"],
    ["flows"],
    ["deployments"],
]
TOP = ("flows", "tasks", "storage", "deployments")


def _package_of(module: str) -> str | None:
    best = None
    for layer in LAYERS:
        for pkg in layer:
            if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best)):
                best = pkg
    return best


def _layer(pkg: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if pkg in layer)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] in TOP]


def _graph() -> dict[str, list[tuple[str, int]]]:
    files = [p for top in TOP for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, line in _imports(path):
            while target not in modules and "." in target:  # `from pkg import name` names no module
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                edges.append((target, line))
        graph[name] = edges
    return graph


def test_every_import_points_down():
    graph, wrong = _graph(), []
    for module, edges in graph.items():
        src = _package_of(module)
        for target, line in edges:
            dst = _package_of(target)
            if src is None or dst is None or src == dst:
                continue
            if _layer(dst) >= _layer(src):
                wrong.append(f"{module}:{line} imports {target} ({dst} is not below {src})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target, _ in graph.get(node, []):
            if target.startswith(node + ".") or node.startswith(target + "."):
                continue  # a package and its own submodules are one unit
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_every_module_is_in_a_layer():
    stray = [m for m in _graph() if _package_of(m) is None and m not in TOP and m != "tasks"]
    assert not stray, f"modules outside every layer: {stray}"


def test_assemble_imports_nothing_from_the_judge_side():
    """Data flows one way: assemble reads shards and sends no request, so it needs nothing of
    rating, the audit or the backends (what it shows of them it gets as data)."""
    judge_side = ("tasks.rating", "tasks.audit", "tasks.backends")
    wrong = [f"{module}:{line} imports {target}" for module, edges in _graph().items()
             if module.startswith("tasks.assemble") for target, line in edges if target.startswith(judge_side)]
    assert not wrong, "\n".join(wrong)

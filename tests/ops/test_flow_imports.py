"""The flow modules import one another in one direction only: no cycle among flows/*.py,
counting imports inside functions too (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"flows.{p.stem}": p for p in FLOWS.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_the_walk_sees_the_flow_modules_and_their_imports():
    graph = _graph()
    assert {"flows.ultrafeedback", "flows.backfill", "flows.shard_tasks", "flows.stage_rate"} <= set(graph)
    assert "flows.ultrafeedback" in graph["flows.backfill"] and "flows.shard_tasks" in graph["flows.stage_sample"]
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the walk finds a cycle when there is one


def test_no_import_cycle_among_the_flow_modules():
    assert _cycle(_graph()) is None


def test_the_stages_do_not_import_the_flows_that_call_them():
    graph = _graph()
    for stage in [m for m in graph if m.startswith("flows.stage_")] + ["flows.shard_tasks", "flows.run_record"]:
        assert not graph[stage] & {"flows.ultrafeedback", "flows.backfill", "flows.cli"}, stage

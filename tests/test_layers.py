"""The packages import one way: sim -> data -> models and losses -> train -> tune, with metrics
and evaluation below training. Every module imports, and no two units import each other, not
even through imports deferred into functions (read from the source, so they count too)."""
import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for pkg in ("kpray", "sim") for p in (ROOT / pkg).rglob("*.py"))


def unit(module: str) -> str | None:
    """kpray.train.loop -> kpray.train; kpray.metrics -> kpray.metrics; sim.x -> sim."""
    parts = module.split(".")
    if parts[0] == "sim":
        return "sim"
    if parts[0] != "kpray":
        return None
    return "kpray" if len(parts) == 1 else f"kpray.{parts[1]}"


def unit_graph() -> dict[str, dict[str, list[str]]]:
    """{unit: {imported unit: [module:line, ...]}} over every import statement in the source."""
    graph: dict = {}
    for module in MODULES:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        src = unit(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                dst = unit(name)
                if dst and dst != src and dst != "kpray":
                    graph.setdefault(src, {}).setdefault(dst, []).append(f"{module}:{node.lineno}")
    return graph


def find_cycle(graph) -> list[str] | None:
    """One cycle of units as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in graph.get(u, {}):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (c := visit(v)):
                return c
        stack.pop()
        state[u] = 2
        return None

    for u in list(graph):
        if u not in state and (c := visit(u)):
            return c
    return None


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_cycle_between_units():
    graph = unit_graph()
    cycle = find_cycle(graph)
    where = [graph[a][b][0] for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, f"import cycle {' -> '.join(cycle)} (at {', '.join(where)})"
    assert "kpray.train" not in graph.get("kpray.evaluation", {})       # the cycle issue 14 removed
    assert not {"kpray.train", "kpray.tune"} & set(graph.get("kpray.models", {}))


def test_the_check_finds_a_cycle():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None

"""The house's shape, checked: no import circles (function-level imports included), no module importing a layer
above its own, no stage importing another stage, nothing but the `make bench-*` scripts importing them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmzip"
# Lowest first. A module may import its own layer and those below.
LAYERS = [
    (
        "core",
        {
            "errors",
            "metrics",
            "progress",
            "positions",
            "config",
            "outputs",
            "artifact",
            "data",
            "recipe",
            "scope",
            "testing",
            "sources",
        },
    ),
    ("library", {"tasks", "training", "modeling", "shrink", "quant", "runtime", "onnx", "bench"}),
    ("stages", {"stages"}),
    ("chains", {"pipeline", "search"}),
    ("cli", {"cli", "__main__"}),
    ("benchmarks", {"benchmarks"}),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t != "llmzip":
                    graph[m].add(t)
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS")


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        if module != "llmzip":
            _layer(module)


def test_no_import_goes_up_a_layer_and_no_stage_imports_another() -> None:
    bad = []
    for module, targets in _graph().items():
        if module == "llmzip":
            continue
        for target in targets:
            if _layer(target) > _layer(module):
                bad.append(f"{module} -> {target} ({LAYERS[_layer(target)][0]} is above {LAYERS[_layer(module)][0]})")
            if module.startswith("llmzip.stages.") and target.startswith("llmzip.stages."):
                bad.append(f"{module} -> {target} (a stage importing a stage)")
    assert bad == []


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_stage_function_is_over_80_lines() -> None:
    """Stages orchestrate; what grows goes one floor down (STYLE.md: no 40-argument, 200-line entry points)."""
    long = []
    for f in (PACKAGE / "stages").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 80:
                    long.append(f"{f.name}:{node.name} ({lines} lines)")
    assert not long, long

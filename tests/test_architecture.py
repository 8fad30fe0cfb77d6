"""The package's import stack: every import (those inside functions too) runs down the stack, no module imports
itself back through others, and no module grows past 500 lines. The stack, lowest first:

    errors < config < models < data < method < training < evaluation < audio (the public speech API) < demo < cli
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "proactive_jax"
STACK = ("errors", "config", "models", "data", "method", "training", "evaluation", "audio", "demo", "cli")
FRONT = ("cli", "demo")
MAX_LINES = 500


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: pathlib.Path, name: str) -> set[str]:
    """Every ``proactive_jax...`` module name an import statement anywhere in the file refers to."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "proactive_jax" or m.startswith("proactive_jax.")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names resolved to the longest existing module)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in _imported(path, name):
            parts = target.split(".")
            for k in range(len(parts), 1, -1):  # the root package itself (lazy public API) is not an edge
                cand = ".".join(parts[:k])
                if cand in files:
                    if cand != name:
                        edges.add(cand)
                    break
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
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
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_in_a_layer_of_the_stack(graph):
    unplaced = sorted(m for m in graph if layer(m) not in (*STACK, "__main__", None))
    assert unplaced == [], f"modules outside the stack {STACK}: {unplaced}"


def test_no_import_cycle_between_modules(graph):
    assert cycles(graph) == []


def test_imports_run_down_the_stack(graph):
    rank = {name: i for i, name in enumerate(STACK)}
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if layer(m) in rank and layer(t) in rank and rank[layer(t)] > rank[layer(m)])
    assert upward == []


def test_no_library_module_imports_the_front(graph):
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                 if layer(m) not in FRONT and layer(m) != "__main__" and layer(t) in FRONT)
    assert bad == []


def test_no_cycle_between_layers(graph):
    layers = {}
    for m, ts in graph.items():
        if layer(m) in STACK:
            layers.setdefault(layer(m), set()).update(layer(t) for t in ts if layer(t) in STACK and layer(t) != layer(m))
    assert cycles(layers) == []


def test_modules_stay_small():
    big = sorted(f"{p.relative_to(ROOT.parent)} ({n} lines)" for p in ROOT.rglob("*.py")
                 if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert big == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The checker itself: a fabricated graph with a cycle and a layer breach is caught."""
    fake = {"proactive_jax.models.a": {"proactive_jax.data.b"}, "proactive_jax.data.b": {"proactive_jax.models.a"}}
    assert cycles(fake) == [["proactive_jax.data.b", "proactive_jax.models.a"]]
    rank = {name: i for i, name in enumerate(STACK)}
    assert rank[layer("proactive_jax.data.b")] > rank[layer("proactive_jax.models.a")]

"""The package layers of docs/architecture.md, checked on the source: who may import whom, and no cycles.

Every import counts, also the ones inside functions: a lazy import that closes a cycle is still a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "preprocess", "neighbor_index")
# the command-line tools: pipeline/<tool>.py and the stages' __main__ (thin CLIs over the library)
ENTRY_POINTS = ({f"pipeline.{p.stem}" for p in (REPO / "pipeline").glob("*.py") if p.stem != "__init__"}
                | {"preprocess.__main__", "neighbor_index.__main__"})

# layer -> the layers it may import (itself always allowed)
ALLOWED = {
    "pipeline.core": set(),
    "pipeline.common": {"pipeline.core"},
    # training draws samples during a run (samples.py): it sits above sampling and evaluation
    "pipeline.training": {"pipeline.core", "pipeline.common", "pipeline.sampling", "pipeline.evaluation"},
    "pipeline.sampling": {"pipeline.core", "pipeline.common"},
    "pipeline.evaluation": {"pipeline.core", "pipeline.common", "pipeline.sampling"},
    "pipeline.research": {"pipeline.core", "pipeline.common", "pipeline.sampling"},
    # the study runs every stage as a command and reads their artifacts; it imports configs, never stages
    "pipeline.studies": {"pipeline.core", "pipeline.common", "pipeline.training"},
    "preprocess": {"pipeline.common"},
    "neighbor_index": {"pipeline.common"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the project modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in _imports(path, module):
            while name and name not in files:  # `from pkg import function` -> pkg
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _layer(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_every_library_module_imports_only_the_layers_below_it():
    graph = _graph()
    violations = []
    for module, targets in sorted(graph.items()):
        layer = _layer(module)
        if layer is None:
            continue  # entry points and package roots may import anything
        for target in sorted(targets):
            target_layer = _layer(target)
            if target in ENTRY_POINTS or (target_layer not in (layer, None) and target_layer not in ALLOWED[layer]):
                violations.append(f"{module} -> {target}")
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_bench_imports_the_library_never_an_entry_point():
    """bench/ times what production runs by building it from the library (pipeline.training.launch, ...),
    not by importing a CLI module, whose functions are argument plumbing."""
    bad = []
    for path in sorted((REPO / "bench").glob("*.py")):
        module = _module_name(path)
        for name in sorted(_imports(path, module)):
            if name in ENTRY_POINTS or name.rpartition(".")[0] in ENTRY_POINTS:
                bad.append(f"{module} -> {name}")
    assert "pipeline.train" in ENTRY_POINTS and "pipeline.training" not in ENTRY_POINTS
    assert not bad, "bench imports entry points:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # package __init__ files re-export their submodules; a package importing its own children is no cycle
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, f"import cycles: {real}"


def test_the_checker_sees_imports():
    """The graph is not vacuous: known edges are found (relative, lazy and `from pkg import module` forms)."""
    graph = _graph()
    assert "pipeline.core.kernels" in graph["pipeline.core.likelihood"]
    assert "pipeline.common.artifacts" in graph["neighbor_index.build"]
    assert "pipeline.sampling.base" in graph["pipeline.sampling.blockwise"]
    assert _layer("pipeline.core.model") == "pipeline.core" and _layer("pipeline.train") is None

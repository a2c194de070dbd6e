"""The import graph of the shipped packages: one-way layers, no test code, no cycles.

sam3d_common is the bottom (imports neither layer); deployments (the stages) may import
sam3d_common only; serve_app (the app layer) may import both. Read from the source with ast,
so a lazy import inside a function counts for the layering checks; only module-level imports
(those that run at import time) count for cycles.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sam3d_common", "deployments", "serve_app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    # ast.walk of a top-level statement also reaches into function bodies: mark those apart.
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        found += [(t, id(node) not in nested) for t in targets]
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _under(target: str, *roots: str) -> bool:
    return any(target == r or target.startswith(r + ".") for r in roots)


def test_the_graph_is_read():
    graph = _graph()
    assert "serve_app.service" in graph and "deployments.reconstructor.base" in graph
    assert ("sam3d_common.frames", True) in graph["deployments.reconstructor.base"]


def test_stages_do_not_import_the_app_layer():
    bad = [f"{m} imports {t}" for m, imps in _graph().items() if _under(m, "deployments")
           for t, _ in imps if _under(t, "serve_app")]
    assert bad == []


def test_the_bottom_package_imports_neither_layer():
    bad = [f"{m} imports {t}" for m, imps in _graph().items() if _under(m, "sam3d_common")
           for t, _ in imps if _under(t, "serve_app", "deployments")]
    assert bad == []


def test_the_segmenter_takes_cuda_graphs_from_the_shared_module_not_the_reconstructor():
    """deployments/cuda_graphs.py serves both stages; it imports no stage, and the segmenter
    imports nothing of the reconstructor."""
    graph = _graph()
    stages = ("deployments.segmenter", "deployments.reconstructor", "deployments.mesh_baker",
              "deployments.image_generator", "deployments.prompt_enhancer")
    bad = [f"deployments.cuda_graphs imports {t}" for t, _ in graph["deployments.cuda_graphs"] if _under(t, *stages)]
    bad += [f"{m} imports {t}" for m, imps in graph.items() if _under(m, "deployments.segmenter")
            for t, _ in imps if _under(t, "deployments.reconstructor")]
    assert bad == []
    assert ("deployments.cuda_graphs", False) in graph["deployments.segmenter.sam3.compile"]  # lazily: torch


def test_shipped_code_does_not_import_tests_or_bench():
    bad = [f"{m} imports {t}" for m, imps in _graph().items() for t, _ in imps if _under(t, "tests", "bench")]
    assert bad == []


def test_no_module_level_import_cycle():
    graph = _graph()
    edges = {m: sorted({t for t, top in imps if top and t in graph and t != m}) for m, imps in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                              else f"{node} → {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert cycles == []

"""The package's layers: every import points down, siblings stay apart, and no file imports itself in a cycle.

Imports inside functions count. Layers, top to bottom (docs/architecture.md):
cli | serve, benchmark | engine, export | inference | model, data | device, meta, files, version | errors.
The package root (``pspnet``, ``pspnet.pspnet``, ``pspnet.__main__``) is a facade over the layers that
nothing inside imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pspnet

ROOT = Path(pspnet.__file__).parent
FACADES = {"pspnet", "pspnet.pspnet", "pspnet.__main__"}
LAYERS: list[set[str]] = [
    {"cli"},
    {"serve", "benchmark"},
    {"engine", "export"},
    {"inference"},
    {"model", "data"},
    {"device", "meta", "files", "version"},
    {"errors"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = ["pspnet", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The pspnet modules ``path`` imports anywhere in it (``from pkg import name`` counts as pkg.name if a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "pspnet" or t.startswith("pspnet."))
    return found - {name}


def unit(module: str) -> str:
    return module.split(".")[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def test_every_module_belongs_to_a_layer(graph):
    assert sorted(m for m in graph if m not in FACADES and unit(m) not in LEVEL) == []


def test_imports_point_down_and_siblings_stay_apart(graph):
    wrong = []
    for source, targets in graph.items():
        if source in FACADES:
            continue
        for target in targets:
            if target in FACADES:
                wrong.append(f"{source} -> {target} (the package root is a facade)")
            elif unit(target) != unit(source) and LEVEL[unit(target)] <= LEVEL[unit(source)]:
                wrong.append(f"{source} -> {target}")
    assert wrong == []


def test_no_import_cycles_between_files(graph):
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []

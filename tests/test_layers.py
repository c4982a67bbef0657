"""The layers of docs/ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported).

Lowest first: core (1) < trajectories (2) < methods, labels, JAX backend (3) < evals (4) <
workflows (5) < CLI (6). A module imports only from its own layer or lower ones, and no two
layer packages import each other. An import inside a function counts like any other: a lazy
import is still a dependency, only a later one.

The package face ``condense/__init__.py`` is what users import, so it sits above everything:
nothing inside the three packages imports it (they import the module that defines a name), and
since importing any ``condense.*`` module runs it first, its own module-level imports are core
only; it may reach the layers above lazily (inside a function), as the notebook API does.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("condense", "trajectories", "evals")
FACE = "condense"
CORE = 1
# (package, layer): the longest matching prefix decides. Every sub-package of condense is named
# here, so a new one gets a layer on purpose, not by falling into core.
LAYERS = {
    "condense": CORE, "condense.config": CORE, "condense.data": CORE, "condense.nets": CORE, "condense.runtime": CORE,
    "trajectories": 2,
    "condense.methods": 3, "condense.labels": 3, "condense.jax": 3,
    "evals": 4,
    "condense.workflows": 5,
    "condense.cli": 6,
}
# Modules that belong to a layer their package does not: `python -m condense` is the command.
ENTRY_POINTS = {"condense.__main__": 6}
NAMES = {1: "core", 2: "trajectories", 3: "methods/labels/jax", 4: "evals", 5: "workflows", 6: "cli"}


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the three packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def known(name: str) -> str | None:
    """The deepest of our modules that ``name`` is or lies in (None: not ours)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules():
        parts.pop()
    return ".".join(parts) or None


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[tuple[str, int, bool], ...]:
    """(imported module, line, lazy) for every import of ``module`` that names one of ours;
    ``from pkg import name`` counts as importing ``pkg.name`` where that is a module."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((t, child.lineno, inside) for t in map(known, (a.name for a in child.names)) if t)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    source = ".".join(parts[:len(parts) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules() else known(source)
                    if target:
                        found.append((target, child.lineno, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return tuple((t, line, lazy) for t, line, lazy in found if t != module)


def package_of(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def layer(module: str) -> int:
    return ENTRY_POINTS.get(module) or LAYERS[package_of(module)]


def unit(module: str) -> str:
    """The layer package a module belongs to: core is one, each package above it another."""
    return "core" if layer(module) == CORE else package_of(module)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_reader_sees_eager_lazy_relative_and_from_package_imports():
    # a check of this file's parser: without it an empty graph would pass every test below
    assert any(t == "condense.synset" and not lazy for t, _, lazy in imports("condense.methods.loop"))  # relative
    assert any(t == "evals.harness" and lazy for t, _, lazy in imports("condense.workflows.pipeline"))  # lazy
    assert any(t == "condense.codec_projector" for t, _, _ in imports("condense.labels.projector"))  # from pkg import mod
    assert any(t == "trajectories.store" for t, _, _ in imports("condense.labels.teachers"))
    assert all(layer(m) in NAMES for m in modules())


def test_every_subpackage_has_a_declared_layer():
    packages = {m for m, path in modules().items() if path.name == "__init__.py"}
    assert packages == set(LAYERS), f"declare the layer of {sorted(packages - set(LAYERS))} in LAYERS"


def test_no_import_goes_up_a_layer():
    wrong = []
    for module in modules():
        for target, line, lazy in imports(module):
            where = f"{modules()[module].relative_to(ROOT)}:{line} ({'lazy' if lazy else 'module level'})"
            if target == FACE and module != FACE:
                wrong.append(f"{where}: imports the package face; import the defining module")
            elif module == FACE and not lazy and layer(target) != CORE:
                wrong.append(f"{where}: the face imports {target} ({NAMES[layer(target)]}) when it is imported")
            elif module != FACE and layer(target) > layer(module):
                wrong.append(f"{where}: {NAMES[layer(module)]} imports {target} ({NAMES[layer(target)]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    between_modules = {m: {t for t, _, _ in imports(m)} for m in modules()}
    assert cycles(between_modules) == []
    between_packages: dict[str, set[str]] = {}
    for module, targets in between_modules.items():
        if module != FACE:
            between_packages.setdefault(unit(module), set()).update(
                unit(t) for t in targets if t != FACE and unit(t) != unit(module))
    assert cycles(between_packages) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

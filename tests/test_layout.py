"""Dependency rules of docs/DESIGN.md §1, checked on the source (every import in every .py of a package
folder, function-level imports included):

- protos imports nothing of ours; bundle and data import only protos;
- edge and cloud never import torch, train or export (nor each other);
- export never imports edge or cloud; train never imports export;
- nothing in production imports the tools on top (bench, attack, demo, evaluation);
- no import cycle between packages (tools included).
"""

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = ("protos", "bundle", "data", "train", "export", "edge", "cloud")
TOOLS = ("bench", "attack", "demo", "evaluation")


def package_folders() -> dict[str, Path]:
    """ppfr subpackage -> its folder: pyproject's package-dir, plus tool folders not installed yet."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {name.removeprefix("ppfr."): REPO / path for name, path in mapping.items()}
    folders.update({t: REPO / t for t in TOOLS if t not in folders})
    return {name: path for name, path in sorted(folders.items()) if path.is_dir()}


PACKAGES = package_folders()


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # . = ppfr.<package>, .. = ppfr
                parent = f"ppfr.{package}" if node.level == 1 else "ppfr"
                base = f"{parent}.{base}".rstrip(".")
            names.add(base)
            if base == "ppfr":  # `from ppfr import data` imports the package ppfr.data
                names.update(f"ppfr.{a.name}" for a in node.names)
    return names


def imports_of(package: str) -> dict[str, set[str]]:
    """file (relative to the repo) -> the modules it imports, for every .py of the package folder."""
    folder = PACKAGES[package]
    return {str(p.relative_to(REPO)): imported_modules(p, package) for p in sorted(folder.rglob("*.py"))}


def ours(module: str) -> str | None:
    """The ppfr package a module belongs to (None for third-party and the standard library)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ppfr" and parts[1] in PACKAGES else None


def package_graph() -> dict[str, dict[str, str]]:
    """package -> {package it imports: the first file that does}."""
    graph = {}
    for package in PACKAGES:
        edges = {}
        for file, modules in imports_of(package).items():
            for target in filter(None, map(ours, sorted(modules))):
                if target != package:
                    edges.setdefault(target, file)
        graph[package] = edges
    return graph


def forbidden(package: str) -> tuple[str, ...]:
    """Module prefixes `package` may not import."""
    no_tools = tuple(f"ppfr.{t}" for t in TOOLS) if package in PRODUCTION else ()
    core = tuple(f"ppfr.{p}" for p in PACKAGES if p not in (package, "protos"))
    rules = {
        "protos": tuple(f"ppfr.{p}" for p in PACKAGES if p != "protos"),
        "bundle": ("torch", *core),
        "data": ("torch", *core),
        "edge": ("torch", "ppfr.train", "ppfr.export", "ppfr.cloud"),
        "cloud": ("torch", "ppfr.train", "ppfr.export", "ppfr.edge"),
        "export": ("ppfr.edge", "ppfr.cloud"),
        "train": ("ppfr.export", "ppfr.edge", "ppfr.cloud"),
    }
    return rules.get(package, ()) + no_tools


def violations(package: str) -> list[str]:
    bad = forbidden(package)
    return [
        f"{file} imports {mod}"
        for file, modules in imports_of(package).items()
        for mod in sorted(modules)
        if any(mod == f or mod.startswith(f + ".") for f in bad)
    ]


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of the package graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path) :] = 1, [node]
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_every_package_and_its_imports():
    assert {"protos", "bundle", "data", "train", "export", "edge", "cloud", "bench", "attack"} <= set(
        PACKAGES
    )
    graph = package_graph()
    assert "bundle" in graph["edge"] and "protos" in graph["bundle"] and "train" in graph["export"]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_dependency_rules(package):
    offenders = violations(package)
    assert not offenders, offenders


def test_no_import_cycle_between_packages():
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between packages: " + "; ".join(steps))


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "x"}, "b": {}, "c": {"a": "z"}}) is None


def test_train_imports_without_the_rest():
    import ppfr.train  # noqa: F401
    import ppfr.train.methods  # noqa: F401


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py (fixtures) and helper modules (helpers.py, bundles.py, ...);
    importing a test module would collect or run its tests twice and hide where the code belongs."""
    offenders = [
        f"{p.name} imports {mod}"
        for p in sorted((REPO / "tests").glob("*.py"))
        for mod in sorted(imported_modules(p, "tests"))
        if mod.split(".")[0].startswith("test_") or mod.split(".")[0] == "conftest"
    ]
    assert not offenders, offenders

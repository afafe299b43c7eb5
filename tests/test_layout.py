"""Dependency rules of docs/DESIGN.md §1, checked on the source: edge and cloud never import torch,
train or export; export never imports edge or cloud; protos imports nothing of ours."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "edge": ("torch", "ppfr.train", "ppfr.export", "ppfr.cloud"),
    "cloud": ("torch", "ppfr.train", "ppfr.export", "ppfr.edge"),
    "export": ("ppfr.edge", "ppfr.cloud"),
    "protos": ("ppfr.train", "ppfr.export", "ppfr.edge", "ppfr.cloud"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            names.add("." + node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_rules(package):
    offenders = []
    for path in sorted((REPO / package).glob("*.py")):
        for mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(REPO)} imports {mod}")
    assert not offenders, offenders


def test_train_imports_without_the_rest():
    import ppfr.train  # noqa: F401
    import ppfr.train.methods  # noqa: F401

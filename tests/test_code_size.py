"""No function in the product's folders is longer than 60 lines (ruff has no line-count rule; its C901 and
PLR0915 in `make lint` cap complexity and statements). Long functions are split into named pieces."""

import ast

from helpers import REPO

FOLDERS = ("train", "export", "edge", "cloud", "bundle", "data")
MAX_LINES = 60


def long_functions(path, root=REPO) -> list[str]:
    """'file:line name (N lines)' for every function or method in `path` longer than MAX_LINES (the def
    line through the last line of its body; decorators not counted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_function_is_longer_than_60_lines():
    sources = [p for folder in FOLDERS for p in sorted((REPO / folder).rglob("*.py")) if "_pb2" not in p.name]
    assert sources
    offenders = [line for p in sources for line in long_functions(p)]
    assert not offenders, "functions over 60 lines:\n" + "\n".join(offenders)


def test_the_check_sees_a_long_method(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def short():\n    pass\n\n\nclass A:\n    def long(self):\n{body}\n"
    (tmp_path / "long.py").write_text(source.replace("\n    x", "\n        x"))
    assert long_functions(tmp_path / "long.py", tmp_path) == ["long.py:6 long (61 lines)"]

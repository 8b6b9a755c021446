"""The size rules of docs/architecture.md: a newcomer reads any module in one sitting and
any function on one screen, and the two commands stay shims around `ind_knn_ad.cli`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES = 400
FUNCTION_LINES = 60
SCRIPTS = ("make_model.py", "anomaly_detector.py")
MODULES = sorted((ROOT / "ind_knn_ad").rglob("*.py"))


def _functions(path: Path) -> list[tuple[str, int]]:
    """Every function and method in `path`, with its length in lines (docstring included)."""
    tree = ast.parse(path.read_text())
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_modules_and_functions_are_short(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= MODULE_LINES, f"{lines} lines; split it by concept"
    long = [(name, size) for name, size in _functions(path) if size > FUNCTION_LINES]
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_commands_are_thin_shims(script: str) -> None:
    """The scripts hold no logic: their code lives in ind_knn_ad.cli, where it is tested
    and imported like the rest of the library."""
    path = ROOT / script
    assert path.read_text().count("\n") <= 60
    assert all(size <= 15 for _, size in _functions(path))


@pytest.mark.parametrize(
    "path",
    [path for path in MODULES if "cli" not in path.relative_to(ROOT / "ind_knn_ad").parts],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_the_library_never_imports_the_commands(path: Path) -> None:
    """Library errors and messages carry no command-line wording, and the commands can
    change without the library: only ind_knn_ad/cli imports ind_knn_ad.cli."""
    tree = ast.parse(path.read_text())
    imported = [
        f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name.startswith("ind_knn_ad.cli")]

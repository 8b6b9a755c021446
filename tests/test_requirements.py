"""Every third-party package the library and the two scripts import is declared, so a
fresh `make venv` (and `pip install '.[fit]'`) has it: the scorer's in requirements.txt,
the base install, and the fit's there or in requirements-fit.txt, the `fit` extra."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import ROOT
from test_scoring_imports import SCORING, module_path

# The scorer's modules that only --report imports: the `report` extra's.
REPORT_ONLY = frozenset(
    {"ind_knn_ad.report.figures", "ind_knn_ad.report.render", "ind_knn_ad.report.score_page"}
)


def imported_modules(files: list[Path]) -> set[str]:
    """Top-level names of every import in `files`, lazy ones included."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"ind_knn_ad", "__future__"}


def declared(*files: str) -> set[str]:
    lines = [line for file in files for line in (ROOT / file).read_text().splitlines()]
    found = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in lines)
    return {match.group().lower().replace("_", "-") for match in found if match}


def undeclared(modules: set[str], requirements: set[str]) -> dict[str, list[str]]:
    """The modules no distribution in `requirements` provides, with their distributions."""
    distributions = packages_distributions()
    return {
        module: distributions.get(module, [module])
        for module in modules
        if not {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        & requirements
    }


def test_every_imported_package_is_a_requirement() -> None:
    files = [*sorted((ROOT / "ind_knn_ad").rglob("*.py")), ROOT / "make_model.py"]
    modules = imported_modules([*files, ROOT / "anomaly_detector.py"])
    assert {"numpy", "torch", "scipy", "threadpoolctl", "sklearn", "PIL"} <= modules
    files = [p.name for p in ROOT.glob("requirements*.txt") if p.name != "requirements-dev.txt"]
    missing = undeclared(modules, declared(*files))
    assert not missing, f"imported but not in requirements*.txt: {missing}"


def test_the_scorer_needs_only_the_base_install() -> None:
    """What the scoring modules import is in requirements.txt, and the fit's heavy
    packages are not: the base install stays small (bench/install.py measures it)."""
    plain = sorted(SCORING - REPORT_ONLY)
    modules = imported_modules([module_path(name) for name in plain])
    assert {"numpy", "onnxruntime", "PIL", "safetensors"} <= modules
    base = declared("requirements.txt")
    assert not undeclared(modules, base), "the scorer imports what the base install lacks"
    report = imported_modules([module_path(name) for name in sorted(REPORT_ONLY)])
    assert {"matplotlib", "jinja2"} <= report
    assert not undeclared(report, base | declared("requirements-report.txt"))
    assert not {"matplotlib", "jinja2"} & base
    assert not {"torch", "torchvision", "timm", "scikit-learn", "rich", "onnx"} & base

"""Every third-party package the library and the two scripts import is declared in
requirements.txt, so a fresh `make venv` (and a pip install of the package) has it."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

from conftest import ROOT


def imported_modules() -> set[str]:
    """Top-level names of every import in ind_knn_ad/ and the scripts, lazy ones included."""
    names: set[str] = set()
    files = [*sorted((ROOT / "ind_knn_ad").rglob("*.py")), ROOT / "make_model.py"]
    for path in [*files, ROOT / "anomaly_detector.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"ind_knn_ad", "__future__"}


def declared() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    found = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in lines)
    return {match.group().lower().replace("_", "-") for match in found if match}


def test_every_imported_package_is_a_requirement() -> None:
    distributions = packages_distributions()
    modules = imported_modules()
    assert {"numpy", "torch", "scipy", "threadpoolctl", "sklearn", "PIL"} <= modules
    missing = {
        module: distributions.get(module, [module])
        for module in modules
        if not {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        & declared()
    }
    assert not missing, f"imported but not in requirements.txt: {missing}"

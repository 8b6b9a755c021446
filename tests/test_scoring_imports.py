"""The scoring path cannot import the fit: a one-off `anomaly_detector.py --model M IMAGE`
loads no torch, timm, scikit-learn, SciPy, matplotlib or Jinja2 and none of the fit's own
modules, and the scorer's modules import (statically, transitively) only modules on the
scoring list below, so that a new import of fit code fails here rather than slowing every
call.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import ROOT, run_script
from PIL import Image, ImageDraw

GOLDEN = ROOT / "tests" / "golden"
# Third-party libraries and the fit's own modules (prefixes) a one-off call must not load.
FORBIDDEN = (
    "torch",
    "timm",
    "sklearn",
    "scipy",
    "matplotlib",
    "jinja2",
    "ind_knn_ad.search.coreset",
    "ind_knn_ad.calibration",
    "ind_knn_ad.tuning",
    "ind_knn_ad.features.augment",
    "ind_knn_ad.features.extractor",
    "ind_knn_ad.features.backbones",
    "ind_knn_ad.features.device",
    "ind_knn_ad.methods.fitting",
    "ind_knn_ad.methods.patchcore.held_out",
    "ind_knn_ad.train",
    "ind_knn_ad.config",
)
# Every ind_knn_ad module the scorer (`runtime`, `cli.score`) may import, those of
# --heatmap and --report included. A module added here must be torch-free and hold no fit code.
SCORING = frozenset(
    {
        "ind_knn_ad",
        "ind_knn_ad.cli",
        "ind_knn_ad.cli.arguments",
        "ind_knn_ad.cli.environment",
        "ind_knn_ad.cli.exit_codes",
        "ind_knn_ad.cli.inputs",
        "ind_knn_ad.cli.score",
        "ind_knn_ad.devices",
        "ind_knn_ad.errors",
        "ind_knn_ad.features",
        "ind_knn_ad.features.borders",
        "ind_knn_ad.io",
        "ind_knn_ad.io.alignment",
        "ind_knn_ad.io.atomic",
        "ind_knn_ad.io.batches",
        "ind_knn_ad.io.datasets",
        "ind_knn_ad.io.images",
        "ind_knn_ad.io.limits",
        "ind_knn_ad.io.preprocess",
        "ind_knn_ad.methods",
        "ind_knn_ad.methods.base",
        "ind_knn_ad.methods.padim",
        "ind_knn_ad.methods.patchcore",
        "ind_knn_ad.methods.patchcore.image_score",
        "ind_knn_ad.methods.spade",
        "ind_knn_ad.model_file",
        "ind_knn_ad.model_file.schema",
        "ind_knn_ad.model_file.store",
        "ind_knn_ad.report",
        "ind_knn_ad.report.figures",
        "ind_knn_ad.report.heatmap",
        "ind_knn_ad.report.summary",
        "ind_knn_ad.report.pictures",
        "ind_knn_ad.report.render",
        "ind_knn_ad.report.score_page",
        "ind_knn_ad.runtime",
        "ind_knn_ad.runtime.detector",
        "ind_knn_ad.runtime.ray_scoring",
        "ind_knn_ad.runtime.records",
        "ind_knn_ad.search",
        "ind_knn_ad.search.nearest",
        "ind_knn_ad.threads",
    }
)
# Run the shim as a user would, and list at exit what it had loaded.
PROGRAM = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["anomaly_detector.py", *sys.argv[1:]]
runpy.run_path("anomaly_detector.py", run_name="__main__")
"""


def forbidden(loaded: list[str]) -> list[str]:
    """The loaded modules that FORBIDDEN names, or that are a method's fit module."""
    return [
        name
        for name in loaded
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
        or (name.startswith("ind_knn_ad.methods.") and name.endswith(".fit"))
    ]


def loaded_by_one_off_call(model: Path, image: Path) -> list[str]:
    result = run_script("-c", PROGRAM, "--model", model, image)
    assert result.stdout.startswith(f"{image},")
    return json.loads(result.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("name", "needed"),
    [
        ("patchcore_top10", ()),
        ("padim", ()),
        ("spade", ()),
        # Finding the part labels its connected regions with SciPy (`alignment._part_mask`).
        ("patchcore_aligned", ("scipy",)),
    ],
)
def test_a_one_off_call_on_a_golden_model_loads_no_fit_code(
    name: str, needed: tuple[str, ...], tmp_path: Path
) -> None:
    image = tmp_path / "part.png"  # a dark part on a plain background, as the models saw
    picture = Image.new("RGB", (48, 48), (196, 198, 192))
    ImageDraw.Draw(picture).ellipse((9, 16, 39, 32), fill=(88, 96, 106))
    picture.save(image)
    loaded = loaded_by_one_off_call(GOLDEN / f"{name}.safetensors", image)
    assert "ind_knn_ad.runtime.detector" in loaded  # it did score
    wrong = forbidden(loaded)
    assert [each for each in wrong if each.split(".")[0] not in needed] == []


def test_a_one_off_call_on_a_fitted_model_loads_no_fit_code(
    sample_model: Path, sample_dataset: Path
) -> None:
    image = next((sample_dataset / "test").rglob("*.png"))
    assert forbidden(loaded_by_one_off_call(sample_model, image)) == []


def module_path(name: str) -> Path | None:
    """The source file of an ind_knn_ad module or package, or None for another name (a
    class or function imported from a module)."""
    relative = Path(*name.split("."))
    for path in (ROOT / relative / "__init__.py", (ROOT / relative).with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imports_of(name: str) -> set[str]:
    """The ind_knn_ad modules that module `name` imports, at any depth of its code (an
    import inside a function runs when it is called), except under TYPE_CHECKING."""
    tree = ast.parse(module_path(name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {each for each in found if each.startswith("ind_knn_ad") and module_path(each)}


def closure(start: list[str]) -> set[str]:
    """`start` and every ind_knn_ad module they import, their packages included."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in seen:
                seen.add(name)
                todo.extend(imports_of(name))
    return seen


def test_the_scorer_imports_only_scoring_modules() -> None:
    runtime = [path.stem for path in (ROOT / "ind_knn_ad" / "runtime").glob("*.py")]
    start = ["ind_knn_ad.cli.score", *(f"ind_knn_ad.runtime.{stem}" for stem in runtime)]
    start = [name.removesuffix(".__init__") for name in start]
    outside = closure(start) - SCORING
    assert outside == set(), f"the scorer imports {sorted(outside)}, not on the scoring list"
    assert forbidden(sorted(SCORING)) == []


def test_the_import_parser_sees_fit_code() -> None:
    """The static test would fail if the scorer imported a method's fit."""
    found = closure(["ind_knn_ad.methods.patchcore.fit"])
    assert {"ind_knn_ad.search.coreset", "ind_knn_ad.calibration.detectability"} <= found
    assert forbidden(sorted(found))

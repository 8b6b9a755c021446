"""Issue 26, items 2, 8 and 10, through make_model.py as a user runs it: degenerate
training sets, --image-size edge cases and --coreset with a method that keeps no coreset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ind_knn_ad.calibration.threshold import auto_threshold, distinct_scores
from ind_knn_ad.cli import exit_codes
from ind_knn_ad.errors import DatasetError
from tests.conftest import ROOT, run_script

FAST = ["--backbone", "efficientnet_lite0", "--device", "cpu"]

# (name, options, exit code, message): each refused before any work.
USAGE_CASES = [
    ("image-size-zero", ["--image-size", "0"], "argument --image-size: .*not '0'"),
    (
        "image-size-and-crop-zero",
        ["--image-size", "0", "--crop", "0"],
        "argument --image-size: .*not '0'",
    ),
    ("crop-zero", ["--crop", "0"], "argument --crop: .*not '0'"),
    ("crop-above-size", ["--image-size", "100", "--crop", "101"], r"--crop \(101\) .*\(100\)"),
    ("coreset-spade", ["--coreset", "0.5", "--method", "spade"], "--coreset is for --method"),
    ("coreset-padim", ["--coreset", "0.5", "--method", "padim"], "--coreset is for --method"),
]


@pytest.mark.parametrize(
    ("options", "message"), [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES]
)
def test_usage_errors(options: list[str], message: str, tmp_path: Path) -> None:
    result = run_script("make_model.py", *options, "--model", tmp_path / "m", check=False)
    assert result.returncode == exit_codes.USAGE, result.stderr
    assert re.search(f"error: {message}", result.stderr), result.stderr
    assert not (tmp_path / "m").exists()


def _images(folder: Path, arrays: list[np.ndarray]) -> Path:
    good = folder / "train" / "good"
    good.mkdir(parents=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(good / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def fits(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The issue's repros, small: two identical images with SPADE, five all-black ones with
    PaDiM; and varied images at --image-size 64 alone (the crop follows the size)."""
    tmp = tmp_path_factory.mktemp("fits")
    rng = np.random.default_rng(0)
    noise = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(3)]
    cases = {
        "spade-identical": (_images(tmp / "same", [noise[0]] * 2), ["--method", "spade"]),
        "padim-black": (
            _images(tmp / "black", [np.zeros((64, 64, 3), np.uint8)] * 5),
            ["--method", "padim"],
        ),
        "spade-size-only": (_images(tmp / "varied", noise), ["--method", "spade"]),
    }
    offline = {"HF_HUB_OFFLINE": "1"}

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        data, options = cases[name]
        model = tmp / f"{name}.safetensors"
        command = ["make_model.py", "--data-dir", str(data), *FAST, "--image-size", "64"]
        result = subprocess.run(
            [sys.executable, *command, *options, "--model", str(model)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **offline},
        )
        return model, result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(run, cases), strict=True))


@pytest.mark.parametrize(
    ("case", "folder"), [("spade-identical", "same"), ("padim-black", "black")]
)
def test_degenerate_training_set_is_refused(fits: dict, case: str, folder: str) -> None:
    """Item 2: these stored threshold 0 and flagged every image, their own included."""
    model, result = fits[case]
    assert result.returncode == exit_codes.DATA_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert re.search(f"error: .*{folder}: cannot fit on these images .*alike", text), text
    assert not model.exists()


def test_image_size_alone_sets_the_crop_and_passes_training_images(fits: dict) -> None:
    """Item 8: --image-size 64 alone was refused against the default crop of 224; item 2's
    other half: the automatic threshold passes the model's own training images."""
    model, result = fits["spade-size-only"]
    assert result.returncode == 0, result.stderr
    from ind_knn_ad.model_file.store import load_model

    loaded = load_model(model)
    assert loaded.settings["preprocess"]["crop"] == 64
    assert loaded.settings["threshold"]["value"] > 0
    images = sorted((model.parent / "varied" / "train" / "good").glob("*.png"))
    lines = run_script("anomaly_detector.py", "--model", model, *images).stdout.split()
    assert [line.rsplit(",", 1)[1] for line in lines] == ["0"] * len(images)


def test_auto_threshold_never_stores_zero() -> None:
    """Item 2: whatever the method, a rule that gives no positive threshold is refused."""
    with pytest.raises(DatasetError, match="alike"):
        auto_threshold(np.zeros(25))
    with pytest.raises(DatasetError, match="alike"):
        distinct_scores(np.full(5, 1e-9), scale=40.0)
    assert distinct_scores(np.array([0.0, 0.5]), scale=40.0).max() == 0.5

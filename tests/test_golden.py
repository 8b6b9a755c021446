"""Golden model files: files written by an earlier version still load and score the same.

`tests/golden/` holds model files of every method and format variant, written once by the
commit named in tests/golden/README.md, with the exact output `anomaly_detector.py` gave for
them then. A difference here is a break of the model-file format or of scoring, not a
reason to regenerate the files. Only the command line is used, never the package's modules,
so that moving modules around cannot change what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ARITHMETIC, ROOT, run_script
from PIL import Image

GOLDEN = ROOT / "tests" / "golden"
# Every golden model file, by stem: tests/golden/<stem>.safetensors, expected/<stem>.csv.
MODELS = [
    "patchcore_max",  # format version 1, fixed threshold (as given by --threshold)
    "patchcore_top10",
    "patchcore_reweighted",
    "padim",
    "spade",
    "patchcore_aligned",  # format version 2: preprocess.align
    "patchcore_no_digests",  # without the SHA-256 records, as files were before them
]
# The images are drawn here in integer arithmetic alone (no RNG, no sine), so they are the
# same pixels on every CPU; the expected output is 5db552b's scorer's on exactly these.
SIDE = 48
STRIPES = np.array([0, 6, 10, 6, 0, -6, -10, -6])  # the part's shading along its axis
# name: (seed, x shift, y shift, defect)
SPECS = {
    "train/good_0": (1, 0, 0, None),
    "train/good_1": (2, 1, -1, None),
    "train/good_2": (3, -1, 1, None),
    "train/good_3": (4, 1, 1, None),
    "test/good_0": (11, 0, -1, None),
    "test/good_1": (12, -1, 0, None),
    "test/good_2": (13, 2, 1, None),
    "test/blob": (21, 0, 1, "blob"),
    "test/scratch": (22, -1, 0, "scratch"),
    "test/crack": (23, 1, -1, "crack"),
}


def draw(seed: int, dx: int, dy: int, defect: str | None) -> np.ndarray:
    """A dark striped ellipse with a hole on a grey background, noise from an integer hash."""
    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.int64)
    noise = ((xs * 37 + ys * 91 + seed * 53) * 2654435761 >> 7) % 5 - 2
    image = np.empty((SIDE, SIDE, 3), np.int64)
    image[:] = np.array([196, 198, 192]) + noise[..., None]
    u, v = xs - SIDE // 2 - dx, ys - SIDE // 2 - dy
    part = u * u * 64 + v * v * 225 <= 14400  # semi-axes 15 and 8
    shade = 88 + STRIPES[u % 8] + (noise - 1)
    body = np.stack([shade, shade + 8, shade + 18], axis=-1)
    image[part] = body[part]
    image[part & ((u - 8) ** 2 + v * v <= 6)] = (150, 152, 150)
    if defect == "blob":
        image[(u + 6) ** 2 + (v - 2) ** 2 <= 9] = (235, 225, 120)
    elif defect == "scratch":
        image[part & (np.abs(5 * v - 2 * u - 5) <= 4) & (np.abs(u) <= 11)] = (230, 230, 230)
    elif defect == "crack":
        image[(np.abs(u + 1) <= 1) & (np.abs(v) <= 7)] = (20, 10, 10)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path) -> list[str]:
    """Every golden image as a PNG under `folder`, and their names relative to it, as
    they were given on the command line when the expected output was made."""
    names = []
    for name, spec in SPECS.items():
        path = folder / "images" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw(*spec), "RGB").save(path)
        names.append(str(path.relative_to(folder)))
    return names


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("golden")
    return folder, write_images(folder)


def expected(stem: str) -> bytes:
    return (GOLDEN / "expected" / f"{stem}.csv").read_bytes()


def score(stem: str, images: tuple[Path, list[str]]) -> subprocess.CompletedProcess:
    folder, names = images
    model = GOLDEN / f"{stem}.safetensors"
    return run_script(
        ROOT / "anomaly_detector.py", "--model", model, *names, cwd=folder, check=False
    )


@pytest.mark.parametrize("stem", MODELS)
def test_golden_model_scores_as_when_written(stem: str, images: tuple[Path, list[str]]) -> None:
    result = score(stem, images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == expected(stem)


@pytest.mark.parametrize("arithmetic", sorted(ARITHMETIC))
@pytest.mark.parametrize("stem", MODELS)
def test_golden_model_scores_the_same_with_other_cpu_kernels(
    stem: str, arithmetic: str, monkeypatch: pytest.MonkeyPatch, images: tuple[Path, list[str]]
) -> None:
    for name, value in ARITHMETIC[arithmetic].items():
        monkeypatch.setenv(name, value)
    result = score(stem, images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == expected(stem)


def test_golden_output_bytes_are_exact(images: tuple[Path, list[str]]) -> None:
    """run_script reads text, which folds CR LF into LF: here the raw bytes, line ends
    included."""
    folder, names = images
    model = GOLDEN / "patchcore_max.safetensors"
    result = subprocess.run(
        [sys.executable, ROOT / "anomaly_detector.py", "--model", model, *names],
        cwd=folder,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected("patchcore_max")


def test_golden_expected_output_has_both_flags(images: tuple[Path, list[str]]) -> None:
    """Each expected file scores every image, with good (0) and defective (1) flags."""
    for stem in MODELS:
        lines = expected(stem).decode().splitlines()
        assert [line.rsplit(",", 2)[0] for line in lines] == images[1], stem
        assert {line.rsplit(",", 1)[1] for line in lines} == {"0", "1"}, stem

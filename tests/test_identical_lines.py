"""The printed lines are a function of the model file and the image bytes: the same bytes,
in CSV and JSON, whether an image is scored alone, in a list, in a directory, with or
without --heatmap, on one thread or two, and under the BLAS and NumPy kernels of other CPUs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ARITHMETIC, ROOT, fit_efficientnet, mvtec_folder


def score(model: Path, *args: str | Path, env: dict[str, str] | None = None, prefix=()) -> str:
    """anomaly_detector.py's stdout; it must succeed."""
    result = subprocess.run(
        [*prefix, sys.executable, "anomaly_detector.py", "--model", str(model), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    assert "nan" not in result.stdout.lower()
    return result.stdout


def scores_of_jsonl(text: str) -> list[tuple[str, str, int]]:
    """(file, score as printed, flag) of each JSON line, which must parse as strict JSON."""
    rows = [json.loads(line, parse_constant=pytest.fail) for line in text.splitlines()]
    return [(row["file"], f"{row['score']:.6f}", row["flag"]) for row in rows]


def check_identical(model: Path, images: list[Path], folder: Path, tmp_path: Path) -> str:
    """Every way of scoring `images` (all of `folder`) prints the same lines."""
    listed = score(model, *images)
    assert len(listed.splitlines()) == len(images)
    assert score(model, folder) == listed
    singles = [score(model, image) for image in images[::3]]
    assert "".join(singles).splitlines() == listed.splitlines()[::3]
    assert score(model, "--heatmap", tmp_path / "maps", *images) == listed
    csv_rows = [tuple(line.rsplit(",", 2)) for line in listed.splitlines()]
    jsonl = scores_of_jsonl(score(model, "--format", "jsonl", *images))
    assert [(f, s, str(flag)) for f, s, flag in jsonl] == csv_rows
    for name, environment in ARITHMETIC.items():
        assert score(model, *images, env=environment) == listed, name
    assert score(model, *images, env={"OMP_NUM_THREADS": "1"}) == listed
    if shutil.which("taskset"):
        assert score(model, *images, prefix=("taskset", "-c", "0")) == listed
    return listed


def test_sample_model_lines_are_identical_every_way(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    folder = sample_dataset / "test"
    check_identical(sample_model, sorted(folder.rglob("*.png")), folder, tmp_path)


@pytest.mark.slow
def test_transistor_with_20_training_images_scores_its_misplaced_part(tmp_path: Path) -> None:
    """The case that printed `nan,0` for a defect (and raised when scored alone): a bank
    from 20 training images, where the pruned search's bounds once lost every patch."""
    source = mvtec_folder("transistor_reduced")
    data = tmp_path / "tr"
    (data / "train" / "good").mkdir(parents=True)
    for image in sorted((source / "train" / "good").iterdir())[:20]:
        shutil.copy(image, data / "train" / "good")
    shutil.copytree(source / "test", data / "test")
    model = tmp_path / "tr.safetensors"
    fit_efficientnet(data, model)
    folder = data / "test"
    listed = check_identical(model, sorted(folder.rglob("*.png")), folder, tmp_path)
    misplaced = next(line for line in listed.splitlines() if "misplaced/001.png" in line)
    assert misplaced.endswith(",1")

"""`anomaly_detector.py --format csv|jsonl`: the same results, for people or for programs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_script

from ind_knn_ad.model_file.store import load_model

FIELDS = {"file", "score", "flag", "threshold", "model", "method", "seconds"}


@pytest.fixture(scope="module")
def images(sample_dataset: Path) -> list[str]:
    return [str(path) for path in sorted((sample_dataset / "test").rglob("*.png"))]


def test_csv_is_the_default(sample_model: Path, images: list[str]) -> None:
    default = run_script("anomaly_detector.py", "--model", sample_model, *images[:3])
    explicit = run_script(
        "anomaly_detector.py", "--model", sample_model, "--format", "csv", *images[:3]
    )
    assert explicit.stdout == default.stdout
    assert [line.count(",") for line in default.stdout.splitlines()] == [2, 2, 2]


def test_jsonl_has_every_field_and_the_csv_results(sample_model: Path, images: list[str]) -> None:
    csv_lines = run_script("anomaly_detector.py", "--model", sample_model, *images).stdout
    start = time.perf_counter()
    result = run_script(
        "anomaly_detector.py", "--model", sample_model, "--format", "jsonl", *images
    )
    elapsed = time.perf_counter() - start
    records = [json.loads(line) for line in result.stdout.splitlines()]
    threshold = load_model(sample_model).threshold
    assert len(records) == len(images)
    for record, image, line in zip(records, images, csv_lines.splitlines(), strict=True):
        file, score, flag = line.split(",")
        assert set(record) == FIELDS
        assert record["file"] == image == file
        assert record["score"] == float(score) and record["flag"] == int(flag)
        assert record["threshold"] == threshold and record["method"] == "patchcore"
        assert record["model"] == str(sample_model)
        assert record["seconds"] > 0
    assert sum(record["seconds"] for record in records) < elapsed


def test_jsonl_follows_a_threshold_override(sample_model: Path, images: list[str]) -> None:
    result = run_script(
        "anomaly_detector.py",
        "--model",
        sample_model,
        "--format",
        "jsonl",
        "--threshold",
        "1e9",
        images[0],
    )
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["threshold"] == 1e9 and record["flag"] == 0


def test_jsonl_gives_odd_names_back_exactly(
    sample_model: Path, images: list[str], tmp_path: Path
) -> None:
    """Commas, quotes, a line break and bytes that are not UTF-8: one line per record, and
    json.loads plus os.fsencode give back the name as given."""
    names = [b'a,b "c".png', b"line\nbreak.png", b"caf\xe9.png"]
    for name in names:
        shutil.copy(images[0], os.path.join(os.fsencode(tmp_path), name))
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "anomaly_detector.py",
            "--model",
            sample_model,
            "--format",
            "jsonl",
            *names,
        ],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode("ascii").splitlines()
    assert [os.fsencode(json.loads(line)["file"]) for line in lines] == names


def test_jsonl_names_the_heatmap(sample_model: Path, images: list[str], tmp_path: Path) -> None:
    result = run_script(
        "anomaly_detector.py",
        "--model",
        sample_model,
        "--format",
        "jsonl",
        "--heatmap",
        tmp_path,
        images[0],
    )
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(record) == FIELDS | {"heatmap"} and Path(record["heatmap"]).is_relative_to(tmp_path)
    assert Path(record["heatmap"]).is_file()
    # Scoring with maps (for the heatmap) and without them gives the same score.
    plain = run_script("anomaly_detector.py", "--model", sample_model, images[0]).stdout
    assert record["score"] == float(plain.split(",")[1])


@pytest.mark.parametrize(
    ("options", "absent"),
    [
        (["--format", "jsonl"], ("torch", "timm", "sklearn", "scipy", "matplotlib")),
        (["--heatmap", "{tmp}"], ("torch", "timm", "sklearn", "matplotlib")),
    ],
    ids=["jsonl", "heatmap"],
)
def test_scoring_imports_no_heavy_library(
    sample_model: Path, images: list[str], tmp_path: Path, options: list[str], absent: tuple
) -> None:
    """torch, timm and scikit-learn never; SciPy only to blur a heatmap."""
    argv = [
        "anomaly_detector.py",
        "--model",
        str(sample_model),
        *(option.format(tmp=tmp_path) for option in options),
        images[0],
    ]
    program = (
        "import sys, anomaly_detector\n"
        f"sys.argv = {argv!r}\n"
        "code = anomaly_detector.main()\n"
        f"print(sorted(set({list(absent)!r}) & set(sys.modules)), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = run_script("-c", program)
    assert result.stderr.strip() == "[]"

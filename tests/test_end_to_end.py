"""Sample set -> make_model.py -> anomaly_detector.py, as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest import run_script

from ind_knn_ad.io.sample_data import DEFECT_KINDS

LINE = re.compile(r"^(?P<file>[^,]+),(?P<score>\d+\.\d{6}),(?P<flag>[01])$")


def test_make_model_reports_and_finishes(sample_model: Path) -> None:
    stdout = sample_model.with_suffix(".stdout").read_text()
    assert stdout.splitlines()[0] == "█│ Running patchcore on metal_nut_sample dataset."
    assert "Test results metal_nut_sample" in stdout and "image_rocauc" in stdout
    assert "pixel_rocauc" in stdout and "actual \\ predicted" in stdout
    assert stdout.rstrip().splitlines()[-1] == "Model file creation is complete."
    results = json.loads(sample_model.with_suffix(".results.json").read_text())
    assert results["image_rocauc"] == 1.0
    assert results["pixel_rocauc"] > 0.9
    assert set(results["per_defect_rocauc"]) == set(DEFECT_KINDS)


@pytest.fixture(scope="module")
def scored(sample_model: Path, sample_dataset: Path) -> dict[str, list[str]]:
    """Each sample test image scored by its own one-off call, as `find -exec {} \\;` does."""
    lines = {}
    for image in sorted((sample_dataset / "test").rglob("*.png")):
        result = run_script("anomaly_detector.py", "--model", sample_model, image)
        assert result.stderr == ""
        lines[str(image)] = result.stdout.splitlines()
    return lines


def test_output_is_exactly_file_score_flag(scored: dict[str, list[str]]) -> None:
    for image, lines in scored.items():
        assert len(lines) == 1
        match = LINE.match(lines[0])
        assert match, lines[0]
        assert match["file"] == image


def test_every_defect_is_flagged_and_no_good_image(scored: dict[str, list[str]]) -> None:
    for image, lines in scored.items():
        flag = int(lines[0].rsplit(",", 1)[1])
        assert flag == int(Path(image).parent.name != "good"), lines[0]
    kinds = {Path(image).parent.name for image in scored}
    assert kinds == {"good", *DEFECT_KINDS}


def test_many_files_in_one_call_match_single_calls(
    sample_model: Path, scored: dict[str, list[str]]
) -> None:
    result = run_script("anomaly_detector.py", "--model", sample_model, *scored)
    assert result.stdout.splitlines() == [lines[0] for lines in scored.values()]


def test_threshold_override_changes_only_flags(
    sample_model: Path, scored: dict[str, list[str]]
) -> None:
    images = list(scored)
    result = run_script(
        "anomaly_detector.py", "--model", sample_model, "--threshold", "1e9", *images
    )
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert [r[2] for r in rows] == ["0"] * len(images)
    assert [r[1] for r in rows] == [scored[i][0].split(",")[1] for i in images]


def test_logs_go_to_stderr_only(sample_model: Path, scored: dict[str, list[str]]) -> None:
    image = next(iter(scored))
    result = run_script("anomaly_detector.py", "-l", "debug", "--model", sample_model, image)
    assert result.stdout.splitlines() == scored[image]
    assert "threshold" in result.stderr

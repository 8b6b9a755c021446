"""The results file and contact sheet beside a model (issue 26, items 7 and 11): named from
the model's whole file name, and an evaluation on another dataset kept apart from the
fit's own."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import fit_efficientnet, run_script

from ind_knn_ad.report.results import beside


def test_names_come_from_the_whole_file_name() -> None:
    """Only `.safetensors` is dropped, so the usual model keeps its old side-file names."""
    assert [p.name for p in beside(Path("m/model.safetensors"))] == [
        "model.results.json",
        "model.contact_sheet.png",
        "model.report.html",
    ]
    assert [p.name for p in beside(Path("m/screw.v1"))] == [
        "screw.v1.results.json",
        "screw.v1.contact_sheet.png",
        "screw.v1.report.html",
    ]
    assert [p.name for p in beside(Path("m/model.safetensors"), "bolts")] == [
        "model.results.bolts.json",
        "model.contact_sheet.bolts.png",
        "model.report.bolts.html",
    ]


def test_models_that_differ_by_suffix_keep_their_own_side_files(
    sample_dataset: Path, tmp_path: Path
) -> None:
    """Item 7: `x.v1` then `x.v2` leave two results files and two contact sheets."""
    first, second = tmp_path / "x.v1", tmp_path / "x.v2"
    fit_efficientnet(sample_dataset, first)
    fit_efficientnet(sample_dataset, second, "--seed", "1")
    sides = [beside(first), beside(second)]
    assert [p.name for p in sides[0] + sides[1]] == [
        "x.v1.results.json",
        "x.v1.contact_sheet.png",
        "x.v1.report.html",
        "x.v2.results.json",
        "x.v2.contact_sheet.png",
        "x.v2.report.html",
    ]
    for one, other in zip(*sides, strict=True):
        assert one.read_bytes() != other.read_bytes()
    assert not (tmp_path / "x.results.json").exists()
    assert not (tmp_path / "x.contact_sheet.png").exists()


def _evaluate(data: Path, model: Path) -> subprocess.CompletedProcess:
    """make_model.py --evaluate-only, as a user runs it; it must exit 0."""
    return run_script("make_model.py", "--data-dir", data, "--model", model, "--evaluate-only")


def test_evaluating_on_another_dataset_warns_and_keeps_the_fits_results(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """Item 11: a one-line warning naming both datasets; the other dataset's results and
    sheet go to files named after it, the fit's own are left as they were."""
    model = tmp_path / "model.safetensors"
    shutil.copy(sample_model, model)
    own = beside(model)
    for source, target in zip(beside(sample_model), own, strict=True):
        shutil.copy(source, target)
    before = [path.read_bytes() for path in own]
    other = tmp_path / "other_parts"
    other.symlink_to(sample_dataset, target_is_directory=True)

    result = _evaluate(other, model)
    fitted_on = json.loads(own[0].read_text())["model_sha256"]
    warning = [line for line in result.stderr.splitlines() if "other_parts" in line]
    assert len(warning) == 1 and f"'{sample_dataset.name}'" in warning[0], result.stderr
    assert warning[0].startswith("Warning: ") and warning[0].endswith("the fit's are kept.")
    assert [path.read_bytes() for path in own] == before
    results, sheet, page = beside(model, "other_parts")
    assert json.loads(results.read_text())["model_sha256"] == fitted_on
    assert sheet.is_file() and fitted_on in page.read_text()

    again = _evaluate(sample_dataset, model)  # the fit's own dataset: no warning
    assert "Warning" not in again.stderr
    assert json.loads(own[0].read_text())["model_sha256"] == fitted_on
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.safetensors", "other_parts", *(p.name for p in [*own, results, sheet, page])]
    )

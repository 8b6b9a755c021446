"""make_model.py's automatic settings and operating points, through the script as users run
it: what it chose is printed and recorded, given flags win, `--settings fixed` searches
nothing, and a threshold set from labelled images is what scoring then flags at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_script

from ind_knn_ad.model_file.store import load_model

pytestmark = pytest.mark.slow


def fit(data: Path, model: Path, *options: str) -> str:
    return run_script(
        "make_model.py", "--data-dir", data, "--model", model, "--device", "cpu", *options
    ).stdout


def test_auto_settings_are_printed_recorded_and_yield_to_given_flags(
    sample_dataset: Path, tmp_path: Path
) -> None:
    model = tmp_path / "auto.safetensors"
    out = fit(sample_dataset, model, "--backbone", "efficientnet_lite0", "--coreset", "0.05")
    assert "Pose:" in out and "not aligned" in out  # the sample parts lie in one pose
    record = load_model(model).settings
    chosen = record["auto_settings"]
    assert sorted(chosen["given"]) == ["backbone", "coreset_fraction"]
    assert record["backbone"] == "efficientnet_lite0"
    assert record["coreset"]["fraction"] == 0.05  # given: not searched
    # Only the image score was left to choose: one candidate per rule, each with figures.
    assert {trial["image_score"] for trial in chosen["candidates"]} == {"max", "top10"}
    assert record["image_score"] == chosen["settings"]["image_score"]


def test_fixed_settings_search_nothing(sample_dataset: Path, tmp_path: Path) -> None:
    model = tmp_path / "fixed.safetensors"
    out = fit(sample_dataset, model, "--settings", "fixed", "--backbone", "efficientnet_lite0")
    settings = load_model(model).settings
    assert "auto_settings" not in settings and "Pose:" not in out
    assert (settings["image_score"], settings["preprocess"]["crop"]) == ("max", 224)


def test_operating_point_sets_the_flag_scoring_prints(sample_dataset: Path, tmp_path: Path) -> None:
    model = tmp_path / "op.safetensors"
    fit(sample_dataset, model, "--settings", "fixed", "--backbone", "efficientnet_lite0")
    automatic = load_model(model).threshold
    good = sorted((sample_dataset / "test" / "good").glob("*.png"))
    scores = {
        line.split(",")[0]: float(line.split(",")[1])
        for line in run_script("anomaly_detector.py", "--model", model, *good).stdout.split()
    }
    # Recalibrate without refitting so that every good test image is flagged but one:
    # fpr=0.75 of 4 good images allows 3 false alarms.
    out = fit(sample_dataset, model, "--evaluate-only", "--operating-point", "fpr=0.75")
    assert "Model recalibrated" in out
    settings = load_model(model).settings
    record = settings["threshold"]
    assert record["operating_point"] == "fpr=0.75"
    assert record["labelled"]["good"] == len(good) == 4
    assert record["labelled"]["false_alarms"] == 3
    assert record["replaced"]["value"] == automatic
    lowest, second = sorted(scores.values())[:2]
    assert lowest < record["value"] < second
    flags = [
        line.split(",")[2]
        for line in run_script("anomaly_detector.py", "--model", model, *good).stdout.split()
    ]
    assert sorted(flags) == ["0", "1", "1", "1"]
    results = json.loads(model.with_suffix(".results.json").read_text())
    assert results["threshold"] == record["value"]
    assert results["confusion_matrix"][0] == [1, 3]
    assert results["threshold_rule"]["operating_point"] == "fpr=0.75"


def test_operating_point_without_labelled_images_is_a_usage_error(
    sample_dataset: Path, tmp_path: Path
) -> None:
    result = run_script(
        "make_model.py",
        "--data-dir",
        sample_dataset / "train" / "good",
        "--backbone",
        "efficientnet_lite0",
        "--operating-point",
        "f1",
        "--model",
        tmp_path / "m.safetensors",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--operating-point needs labelled images in test/")
    assert not (tmp_path / "m.safetensors").exists()


def test_a_bad_operating_point_is_refused_by_the_parser(tmp_path: Path) -> None:
    result = run_script("make_model.py", "--operating-point", "recall=2", check=False)
    assert result.returncode == 2
    assert "recall must be a number in (0, 1], not '2'" in result.stderr


def test_quick_settings_never_try_the_larger_input(tmp_path: Path) -> None:
    """448 px photos could take the larger input: `auto` validates the base input first
    (and says why it kept it), `quick` does not look at the input at all."""
    from test_autosettings import save, woven

    data = tmp_path / "woven"
    save([woven(seed) for seed in range(6)], data / "train" / "good")
    given = ("--backbone", "efficientnet_lite0", "--image-score", "max", "--coreset", "0.05")
    out = fit(data, tmp_path / "auto.safetensors", *given)
    record = load_model(tmp_path / "auto.safetensors").settings["auto_settings"]
    assert [c["input"] for c in record["candidates"]] == ["256/224"]
    assert "input kept" in " ".join(out.split())  # the table's caption wraps
    fit(data, tmp_path / "quick.safetensors", *given, "--settings", "quick")
    quick = load_model(tmp_path / "quick.safetensors").settings
    assert quick["auto_settings"]["candidates"] == [] and quick["preprocess"]["crop"] == 224

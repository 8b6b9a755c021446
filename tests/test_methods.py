"""Every registered method (PatchCore, PaDiM, SPADE and any other): fitted through
make_model.py, scored through anomaly_detector.py, stored in the one model format with its
own validated tensors. The method-level tests run over the registry, so a new method gets
them without being named here."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script
from safetensors.numpy import save_file

from ind_knn_ad import methods
from ind_knn_ad.cli import exit_codes
from ind_knn_ad.config import FitConfig
from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.methods import padim
from ind_knn_ad.methods.padim import fit as padim_fit
from ind_knn_ad.methods.spade import fit as spade_fit
from ind_knn_ad.model_file.store import METADATA_KEY, load_model, save_model

METHODS = methods.names()


@pytest.fixture(scope="module")
def method_models(
    sample_dataset: Path, sample_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A model of the sample set per method, made as a user makes them (the default
    method's is the sample model); what make_model.py printed is kept beside each as
    `<method>.stdout`."""
    folder = tmp_path_factory.mktemp("methods")
    models = {FitConfig().method: sample_model}
    for method in set(METHODS) - set(models):
        model = folder / f"{method}.safetensors"
        result = run_script(
            "make_model.py",
            "--data-dir",
            sample_dataset,
            "--backbone",
            "efficientnet_lite0",
            "--device",
            "cpu",
            "--method",
            method,
            "--model",
            model,
        )
        model.with_suffix(".stdout").write_text(result.stdout)
        models[method] = model
    return models


@pytest.fixture(scope="module")
def test_images(sample_dataset: Path) -> list[Path]:
    return sorted((sample_dataset / "test").rglob("*.png"))


@pytest.mark.parametrize("method", METHODS)
def test_fit_reports_the_method_and_ranks_every_defect_first(
    method_models: dict[str, Path], method: str
) -> None:
    model = method_models[method]
    stdout = model.with_suffix(".stdout").read_text()
    assert stdout.splitlines()[0] == f"█│ Running {method} on metal_nut_sample dataset."
    assert f"│ {method} " in stdout
    results = json.loads(model.with_suffix(".results.json").read_text())
    assert results["image_rocauc"] == 1.0
    assert results["pixel_rocauc"] > 0.9
    assert model.with_suffix(".contact_sheet.png").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_scoring_flags_no_good_image_and_agrees_with_evaluation(
    method_models: dict[str, Path], method: str, test_images: list[Path]
) -> None:
    """The scorer's ONNX features give the evaluation's torch scores; PaDiM's threshold
    flags every defect, SPADE's (an image-level distance, more cautious) at least no good
    image."""
    model = method_models[method]
    result = run_script("anomaly_detector.py", "--model", model, *test_images)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert [Path(row[0]) for row in rows] == test_images
    flags = {Path(row[0]): int(row[2]) for row in rows}
    for image, flag in flags.items():
        defective = image.parent.name != "good"
        assert flag <= defective, image
        if method == "padim":
            assert flag == defective, image
    evaluated = {
        Path(item["file"]): item["score"]
        for item in json.loads(model.with_suffix(".results.json").read_text())["images"]
    }
    for row in rows:
        assert float(row[1]) == pytest.approx(evaluated[Path(row[0])], rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_the_map_marks_the_defect(
    method_models: dict[str, Path], method: str, sample_dataset: Path, tmp_path: Path
) -> None:
    from test_heatmap import assert_hot_on_mask

    image = sample_dataset / "test" / "bent" / "000.png"
    run_script(
        "anomaly_detector.py", "--model", method_models[method], "--heatmap", tmp_path, image
    )
    [png] = tmp_path.rglob("*.png")
    assert_hot_on_mask(png, sample_dataset / "ground_truth" / "bent" / "000_mask.png")


def test_model_file_records_the_method_and_its_tensors(method_models: dict[str, Path]) -> None:
    padim_model = load_model(method_models["padim"])
    assert padim_model.method == "padim" and "memory_bank" not in padim_model.tensors
    assert padim_model.settings["image_score"] == "max"
    channels = padim_model.tensors["channels"]
    count, positions = len(channels), 28 * 28
    assert count == padim_model.settings["padim"]["channels"] == padim_fit.CHANNELS
    assert padim_model.tensors["mean"].shape == (positions, count)
    assert padim_model.tensors["inverse_covariance"].shape == (positions, count, count)
    spade_model = load_model(method_models["spade"])
    assert spade_model.method == "spade" and "memory_bank" not in spade_model.tensors
    assert spade_model.settings["spade"]["neighbours"] == spade_fit.NEIGHBOURS
    images, channels = spade_model.settings["train_images"], spade_model.settings["feature_dim"]
    assert spade_model.tensors["train_patches"].shape == (images, positions, channels)
    assert spade_model.tensors["image_vectors"].shape == (images, channels)
    for model in (padim_model, spade_model):
        assert model.settings["threshold"]["holdout"]["count"] == model.settings["train_images"]


def _without(key: str) -> Callable[[dict, dict], None]:
    return lambda _settings, tensors: tensors.pop(key)


def _tensor(key: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict, dict], None]:
    def change(_settings: dict, tensors: dict) -> None:
        tensors[key] = make(tensors[key])

    return change


def _setting(method: str, key: str, value: object) -> Callable[[dict, dict], None]:
    return lambda settings, _tensors: settings[method].update({key: value})


TENSOR_CASES = [
    ("padim", "no-mean", _without("mean"), "lacks its mean"),
    (
        "padim",
        "covariance-shape",
        _tensor("inverse_covariance", lambda a: a[:, :-1]),
        r"inverse_covariance has shape \(784, 99, 100\)",
    ),
    ("padim", "mean-float64", _tensor("mean", lambda a: a.astype(np.float64)), "type float64"),
    (
        "padim",
        "channel-out-of-range",
        _tensor("channels", lambda a: a + 1000),
        "channels outside",
    ),
    ("padim", "channels-repeat", _tensor("channels", lambda a: a * 0 + a[0]), "channels repeat"),
    (
        "padim",
        "not-finite",
        _tensor("mean", lambda a: np.where(a == a.flat[0], np.nan, a)),
        "mean holds non-finite values",
    ),
    ("padim", "channel-count", _setting("padim", "channels", 5), r"has shape \(100,\)"),
    ("spade", "no-vectors", _without("image_vectors"), "lacks its image_vectors"),
    (
        "spade",
        "too-few-patches",
        _tensor("train_patches", lambda a: a[:-1]),
        "train_patches has shape",
    ),
    ("spade", "neighbours", _setting("spade", "neighbours", 10_000), "SPADE neighbours"),
    ("spade", "unknown-method", lambda s, _t: s.update(method="gan"), "unknown method 'gan'"),
]


@pytest.mark.parametrize(
    ("method", "change", "message"),
    [case[:1] + case[2:] for case in TENSOR_CASES],
    ids=[case[1] for case in TENSOR_CASES],
)
def test_loading_validates_the_method_tensors(
    method_models: dict[str, Path],
    tmp_path: Path,
    method: str,
    change: Callable[[dict, dict], None],
    message: str,
) -> None:
    model = load_model(method_models[method])
    tensors = {key: np.array(value) for key, value in model.tensors.items()}
    tensors["feature_graph"] = np.frombuffer(model.feature_graph, np.uint8)
    change(model.settings, tensors)
    target = tmp_path / "case.safetensors"
    save_file(tensors, target, metadata={METADATA_KEY: json.dumps(model.settings)})
    with pytest.raises(ModelFileError, match=message):
        load_model(target)
    result = run_script("anomaly_detector.py", "--model", target, "any.png", check=False)
    assert result.returncode == exit_codes.MODEL_ERROR and result.stdout == ""


def test_saving_validates_the_method_tensors(method_models: dict[str, Path], tmp_path: Path):
    model = load_model(method_models["padim"])
    del model.tensors["mean"]
    with pytest.raises(ModelFileError, match="lacks its mean"):
        save_model(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", METHODS)
def test_image_score_names_the_methods_own_rules(name: str, sample_dataset: Path) -> None:
    """--image-score takes a method's own rules only: another method's rule is refused
    (SPADE's `max` was silently read as its `knn_mean`), naming the methods that have it."""
    method = methods.find(name)
    foreign = [rule for rule in methods.image_score_rules() if rule not in method.image_scores]
    for rule in foreign:
        result = run_script(
            "make_model.py", "--data-dir", sample_dataset, "--method", name, "--image-score",
            rule, check=False,
        )  # fmt: skip
        assert result.returncode == exit_codes.USAGE
        having = " or --method ".join(methods.having_image_score(rule))
        assert f"--image-score {rule} is for --method {having} only" in result.stderr
    help_text = " ".join(run_script("make_model.py", "--help").stdout.split())
    assert f"{', '.join(method.image_scores)} ({name})" in help_text


def test_padim_held_out_scores_equal_refits_without_each_image() -> None:
    """The closed form against the definition: refit without image i, then score it."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 3, 6)).astype(np.float32)
    channels = np.array([0, 2, 3, 5])
    fitted = padim_fit.fit_gaussians(features, channels)
    for image in range(len(features)):
        others = np.delete(features, image, axis=0)
        refit = padim_fit.fit_gaussians(others, channels)
        scorer = padim.PadimScorer(channels, refit.mean, refit.inverse_covariance)
        grid = features[image].T.reshape(1, 6, 3, 1)  # (B, C, h, w) with h * w = 3
        assert fitted.holdout_scores[image] == pytest.approx(scorer(grid)[0].score, rel=1e-4)


def test_spade_held_out_scores_leave_the_image_out() -> None:
    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], dtype=np.float32)
    scores = spade_fit.holdout_scores(vectors, 2)
    assert scores[0] == pytest.approx((1.0 + 2.0) / 2)
    assert scores[3] == pytest.approx((np.hypot(5, 3) + np.hypot(4, 5)) / 2)

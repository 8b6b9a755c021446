"""A fourth method, defined and registered in this file alone, goes the whole way: fit,
model file, load, and the command-line tools, which find it through an entry point.

The toy scores each patch by its distance to the mean training feature; the image score
is the largest. If anything outside `ind_knn_ad.methods` still asked for a method by name,
this method would fail somewhere on the way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from conftest import ROOT

from ind_knn_ad import methods
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import Method, PatchScores, Scorer, features_only
from ind_knn_ad.methods.fitting import Fitted, Fitter
from ind_knn_ad.model_file.schema import Model, TensorSpec
from ind_knn_ad.model_file.store import load_model, save_model

if TYPE_CHECKING:
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import TrainFeatures
    from ind_knn_ad.methods.fitting import ProgressFactory

NAME = "mean_distance"


def distances(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(C, h, w) features to each patch's Euclidean distance to `mean`, (h, w), in float64."""
    rows = features.transpose(1, 2, 0).astype(np.float64)
    return np.sqrt(((rows - mean.astype(np.float64)) ** 2).sum(axis=-1))


class MeanDistance(Method):
    """Distance to the mean training feature."""

    name = NAME
    image_scores = ("max_distance",)
    map_in_score_units = True
    required_settings = {NAME: dict}  # noqa: RUF012 - read only
    fit_module = __name__  # its FITTER is below

    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]:
        return {"mean_feature": TensorSpec(np.float32, (settings["feature_dim"],))}

    def scorer(self, model: Model, preprocess: Preprocess, maps: bool) -> Scorer:
        mean = model.tensors["mean_feature"]

        def score(features: np.ndarray) -> list[PatchScores]:
            found = [distances(image, mean) for image in features]
            return [PatchScores(float(each.max()), each.astype(np.float32)) for each in found]

        return features_only(score)

    def summary(self, model: Model) -> str:
        return f"Mean of {model.settings[NAME]['patches']} training patches"


class MeanDistanceFitter(Fitter):
    """The mean training feature, and each training image's distance to the others'."""

    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        images, positions, _ = train.features.shape
        total = train.features.sum(axis=(0, 1), dtype=np.float64)

        def held_out() -> np.ndarray:
            scores = []
            for image in train.features:
                others = (total - image.sum(axis=0, dtype=np.float64)) / ((images - 1) * positions)
                grid = image.T.reshape(-1, *train.grid)
                scores.append(distances(grid, others).max())
            return np.array(scores)

        mean = (total / (images * positions)).astype(np.float32)
        return Fitted({"mean_feature": mean}, {NAME: {"patches": images * positions}}, held_out)


TOY = MeanDistance()
FITTER = MeanDistanceFitter()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """TOY registered for this test only."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    methods.register(TOY)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Python finds TOY as an installed package's entry point."""
    folder = tmp_path_factory.mktemp("plugins")
    info = folder / "ind_knn_ad_toy-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ind-knn-ad-toy\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[{methods.ENTRY_POINTS}]\n{NAME} = test_method_registry:TOY\n"
    )
    path = os.pathsep.join(map(str, (ROOT, ROOT / "tests", folder)))
    return {**os.environ, "PYTHONPATH": path}


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env
    )


def test_a_registered_method_fits_saves_loads_and_scores_through_the_cli(
    registered: None, sample_dataset: Path, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.io.datasets import load_dataset
    from ind_knn_ad.runtime.detector import Detector
    from ind_knn_ad.train import train

    dataset = load_dataset(sample_dataset)
    result = train(FitConfig(method=NAME, backbone="efficientnet_lite0"), dataset, device="cpu")
    model = result.model
    assert model.method == NAME and model.settings["image_score"] == "max_distance"
    height, width = model.settings["feature_grid"]
    assert model.settings[NAME]["patches"] == 40 * height * width
    assert result.evaluation is not None  # a poor detector, but evaluated like any other
    assert len(result.evaluation.images) == len(dataset.test)
    path = tmp_path / "toy.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.settings == json.loads(json.dumps(model.settings))
    np.testing.assert_array_equal(loaded.tensors["mean_feature"], model.tensors["mean_feature"])

    images = sorted((sample_dataset / "test").rglob("*.png"))[::3]
    heatmaps = tmp_path / "heatmaps"
    scored = run(plugin_env, "anomaly_detector.py", "--model", path, "--heatmap", heatmaps, *images)
    assert scored.returncode == 0, scored.stderr
    rows = list(csv.reader(io.StringIO(scored.stdout)))
    assert [row[0] for row in rows] == list(map(str, images))
    detector = Detector(loaded, "cpu")
    mean = loaded.tensors["mean_feature"]
    for image, (_, printed, flag) in zip(images, rows, strict=True):
        features = detector.features(detector.preprocess.load(image)[None])[0]
        expected = float(np.linalg.norm(features.reshape(len(mean), -1).T - mean, axis=1).max())
        assert float(printed) == pytest.approx(expected, rel=1e-5)
        assert int(flag) == int(float(printed) >= loaded.threshold)
    assert len(list(heatmaps.rglob("*.png"))) == len(images)

    jsonl = run(plugin_env, "anomaly_detector.py", "--model", path, "--format", "jsonl", images[0])
    assert json.loads(jsonl.stdout)["method"] == NAME

    plain = {**os.environ, "PYTHONPATH": str(ROOT)}  # no entry point: an unknown method
    unknown = run(plain, "anomaly_detector.py", "--model", path, images[0])
    assert unknown.returncode == 3 and not unknown.stdout
    assert f"unknown method '{NAME}'" in unknown.stderr


def test_make_model_offers_a_plugin_method(
    sample_dataset: Path, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    """The --method choices come from the registry, entry points included."""
    model = tmp_path / "toy.safetensors"
    fitted = run(
        plugin_env,
        "make_model.py",
        "--data-dir",
        sample_dataset,
        "--backbone",
        "efficientnet_lite0",
        "--device",
        "cpu",
        "--method",
        NAME,
        "--model",
        model,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert fitted.stdout.splitlines()[0] == f"█│ Running {NAME} on metal_nut_sample dataset."
    assert re.search(r"Mean of \d+ training patches; threshold ", fitted.stderr)
    image = sorted((sample_dataset / "test" / "good").glob("*.png"))[0]
    scored = run(plugin_env, "anomaly_detector.py", "--model", model, image)
    assert scored.returncode == 0 and scored.stdout.startswith(f"{image},"), scored.stderr

"""Border rules of the neighbourhood average: what each does at the edge, that the exported
graph carries it, and that the model file says which one a model was fitted with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.borders import BORDERS, DEFAULT_BORDER, UNRECORDED_BORDER, fitted_border
from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures
from ind_knn_ad.features.patches import PatchFeatures
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import load_model, save_model
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.train import fit_method


class Identity(nn.Module):
    """A backbone whose single stage is its input."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images]


def averaged(border: str, feature_map: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return PatchFeatures(Identity(), 3, border)(feature_map)


def test_a_constant_map_stays_constant_except_where_zeros_are_counted() -> None:
    ones = torch.ones(1, 1, 5, 5)
    for border in ("exclude", "reflect"):
        assert torch.allclose(averaged(border, ones), ones)
    zeros = averaged("zeros", ones)[0, 0]
    assert torch.allclose(zeros[0, 0], torch.tensor(4 / 9))  # corner: 4 of 9 inside
    assert torch.allclose(zeros[0, 2], torch.tensor(6 / 9))  # edge: 6 of 9 inside
    assert torch.allclose(zeros[1:-1, 1:-1], torch.ones(3, 3))


def test_the_rules_differ_only_on_the_outer_ring() -> None:
    feature_map = torch.randn(2, 4, 7, 9, generator=torch.Generator().manual_seed(0))
    results = {border: averaged(border, feature_map) for border in BORDERS}
    inner = results["exclude"][..., 1:-1, 1:-1]
    for border in BORDERS:
        assert torch.allclose(results[border][..., 1:-1, 1:-1], inner, atol=1e-6)
    assert not torch.allclose(results["zeros"], results["exclude"])
    assert not torch.allclose(results["reflect"], results["exclude"])
    expected = {
        "zeros": F.avg_pool2d(feature_map, 3, 1, 1, count_include_pad=True),
        "exclude": F.avg_pool2d(feature_map, 3, 1, 1, count_include_pad=False),
    }
    for border, value in expected.items():
        assert torch.allclose(results[border], value, atol=1e-6)


def test_reflect_mirrors_without_repeating_the_edge() -> None:
    row = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]]).expand(1, 1, 3, 4)
    # Mirrored at each edge: 2 1 2 3 4 3, so the first mean is (2 + 1 + 2) / 3
    result = averaged("reflect", row)[0, 0, 1]
    assert torch.allclose(result, torch.tensor([5 / 3, 2.0, 3.0, 10 / 3]))


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="border must be one of zeros, exclude, reflect"):
        PatchFeatures(Identity(), 3, "wrap")


def test_the_settings_default_is_the_module_default() -> None:
    assert FitConfig().border == DEFAULT_BORDER in BORDERS


def test_files_without_the_key_mean_the_old_rule() -> None:
    assert UNRECORDED_BORDER == "exclude"
    assert fitted_border({}) == "exclude"
    for border in BORDERS:
        assert fitted_border({"border": border}) == border


@pytest.fixture(scope="module")
def train_features() -> TrainFeatures:
    """Random stand-ins for the training features of 3 images on a 8 x 8 grid, with
    efficientnet_lite0's 152 channels (the methods need not know they are random)."""
    rng = np.random.default_rng(0)
    return TrainFeatures(rng.random((3, 64, 152), dtype=np.float32), (8, 8))


@pytest.mark.parametrize("method", ["patchcore", "padim", "spade"])
@pytest.mark.parametrize("border", BORDERS)
def test_the_model_carries_its_rule_in_settings_and_graph(
    method: str, border: str, train_features: TrainFeatures, tmp_path: Path
) -> None:
    settings = FitConfig(
        method=method, backbone="efficientnet_lite0", border=border, preprocess=Preprocess(64, 64)
    )
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    model = fit_method(settings, extractor, train_features, threshold=1.0)
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.settings["border"] == border
    assert fitted_border(loaded.settings) == border
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    graph = Detector(loaded, "cpu").features(images)
    np.testing.assert_allclose(graph, extractor(images), atol=1e-4)
    other = FeatureExtractor(
        replace(settings, border="exclude" if border != "exclude" else "zeros"), torch.device("cpu")
    )
    assert not np.allclose(graph, other(images), atol=1e-4)


def test_a_file_written_without_the_key_still_loads_and_scores(
    train_features: TrainFeatures, tmp_path: Path
) -> None:
    settings = FitConfig(
        backbone="efficientnet_lite0", border="exclude", preprocess=Preprocess(64, 64)
    )
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    model = fit_method(settings, extractor, train_features, threshold=1.0)
    del model.settings["border"]  # as every file written before the rule was recorded
    path = tmp_path / "old.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert "border" not in loaded.settings
    assert fitted_border(loaded.settings) == "exclude"
    images = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    detector = Detector(loaded, "cpu")
    np.testing.assert_allclose(detector.features(images), extractor(images), atol=1e-4)
    cuts = np.zeros((1, 64, 64, 3), np.uint8)  # an unaligned scorer does not look at them
    assert np.isfinite(detector.scorer(detector.features(images), cuts)[0].score)


def test_new_fits_count_the_zero_padding_by_default() -> None:
    """The references' rule, and the best of the three on the shared sets."""
    assert DEFAULT_BORDER == "zeros"

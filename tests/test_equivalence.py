"""The fast scoring path against the plain one: ONNX Runtime features against the torch
network they were exported from, batches against single images, one CLI call against many."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.batches import expand_inputs
from ind_knn_ad.methods.patchcore.image_score import IMAGE_SCORES, score_features
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.runtime.detector import Detector

RTOL = 1e-4
# Scores from two feature implementations (two machines' arithmetic) differ by at most this,
# relatively: the README's cross-machine tolerance (bench/tolerance.py).
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def test_images(sample_dataset: Path) -> list[Path]:
    return sorted((sample_dataset / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def torch_scores(sample_model: Path, test_images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and patch maps from the torch feature network on the CPU, the path the
    fit itself takes, one image at a time."""
    import torch

    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import FeatureExtractor

    model = load_model(sample_model)
    settings = FitConfig(
        backbone=model.settings["backbone"],
        layers=tuple(model.settings["layers"]),
        neighbourhood=model.settings["neighbourhood"],
        image_score=model.settings["image_score"],
    )
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    detector = Detector(model, "cpu")
    scores, maps = [], []
    for path in test_images:
        features = extractor(detector.preprocess.load(path)[None])
        (result,) = score_features(features, model.tensors["memory_bank"], settings.image_score)
        scores.append(result.score)
        maps.append(result.patch_map)
    return np.array(scores), np.stack(maps)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnx_scores_match_torch(
    sample_model: Path,
    test_images: list[Path],
    torch_scores: tuple[np.ndarray, np.ndarray],
    batch_size: int,
) -> None:
    detector = Detector(load_model(sample_model), "cpu")
    results = [result for _, result in detector.score_files(test_images, batch_size)]
    scores = np.array([result.score for result in results])
    maps = np.stack([result.patch_map for result in results])
    expected_scores, expected_maps = torch_scores
    np.testing.assert_allclose(scores, expected_scores, rtol=SCORE_TOLERANCE)
    np.testing.assert_allclose(maps, expected_maps, rtol=RTOL, atol=RTOL * expected_maps.max())


def test_batch_and_single_scores_are_identical(sample_model: Path, test_images: list[Path]) -> None:
    """Not just close: a score must not depend on which other images share its batch.
    Maps are BLAS distances, exact only where the score is made, so they are compared as
    the ONNX and torch maps are."""
    detector = Detector(load_model(sample_model), "cpu")
    prepared = [detector.preprocess.prepare_file(p) for p in test_images]
    single = [detector.score_arrays(p.array[None], p.cut[None])[0] for p in prepared]
    batched = [result for _, result in detector.score_files(test_images, batch_size=6)]
    for one, many in zip(single, batched, strict=True):
        assert one.score == many.score
        np.testing.assert_allclose(
            one.patch_map, many.patch_map, rtol=RTOL, atol=RTOL * many.patch_map.max()
        )


def test_a_directory_expands_to_its_images_in_order(
    sample_dataset: Path, test_images: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.PNG").write_bytes(test_images[0].read_bytes())
    (tmp_path / "a.png").write_bytes(test_images[1].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    missing = "missing.png"  # kept as given, for the loader to report
    assert expand_inputs([sample_dataset / "test", tmp_path, missing]) == [
        *test_images,
        tmp_path / "a.png",
        tmp_path / "b" / "2.PNG",
        missing,
    ]


@pytest.mark.parametrize("image_score", IMAGE_SCORES)
def test_scores_without_maps_are_the_same_bits(
    sample_model: Path, test_images: list[Path], image_score: str
) -> None:
    """The pruned search (maps=False) must find exactly each image's worst patches."""
    model = load_model(sample_model)
    detector = Detector(model, "cpu")
    features = detector.features(np.stack([detector.preprocess.load(p) for p in test_images]))
    bank = model.tensors["memory_bank"]
    full = [r.score for r in score_features(features, bank, image_score)]
    fast = score_features(features, bank, image_score, maps=False)
    single = [
        score_features(features[i : i + 1], bank, image_score, maps=False)[0].score
        for i in range(len(features))
    ]
    assert [r.score for r in fast] == full == single
    assert all(r.patch_map is None for r in fast)


def test_a_graph_whose_grid_differs_from_the_model_is_refused(
    sample_model: Path, test_images: list[Path]
) -> None:
    """Files from before the digests can still pair a bank with another graph."""
    model = load_model(sample_model)
    model.settings["feature_grid"] = [7, 7]
    detector = Detector(model, "cpu")
    image = detector.preprocess.load(test_images[0])
    with pytest.raises(ModelFileError, match="grid, but the model was fitted on 7x7"):
        detector.features(image[None])

"""One preprocessing path: fitting, evaluation and scoring see identical arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ind_knn_ad.io.batches import preprocessed_batches
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.runtime.detector import Detector


def test_fit_and_score_preprocess_identically(
    sample_model: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = sorted((sample_dataset / "test").rglob("*.png"))[:5]
    detector = Detector(load_model(sample_model), "cpu")
    seen: list[np.ndarray] = []
    features = detector.features
    monkeypatch.setattr(
        detector, "features", lambda arrays: seen.append(arrays) or features(arrays)
    )
    list(detector.score_files(images))
    fit_arrays = [
        value.array for batch in preprocessed_batches(images, Preprocess()) for _, value in batch
    ]
    assert detector.preprocess == Preprocess()  # the model stored the settings it was fit with
    np.testing.assert_array_equal(np.concatenate(seen), np.stack(fit_arrays))


def test_preprocess_geometry() -> None:
    from PIL import Image

    image = Image.new("RGB", (300, 200), (255, 0, 0))
    array = Preprocess(resize=64, crop=48)(image)
    assert array.shape == (3, 48, 48) and array.dtype == np.float32
    expected_red = (1.0 - 0.485) / 0.229
    np.testing.assert_allclose(array[0], expected_red, rtol=1e-5)
    with pytest.raises(ValueError):
        Preprocess(resize=64, crop=65)

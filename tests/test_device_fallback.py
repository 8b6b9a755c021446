"""`--device auto` on a machine that claims CUDA but cannot start it: ONNX Runtime's CUDA
build without a working GPU. Scoring falls back to the CPU with the same scores; asking for
cuda is a ConfigError (exit 2). On a CPU build nothing claims CUDA, so the claim is made
here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from ind_knn_ad.errors import ConfigError
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.runtime.detector import Detector


@pytest.fixture
def claims_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime has CUDA here: the fallback is not what runs")
    claimed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: claimed)


def _scores(detector: Detector, images: list[Path]) -> np.ndarray:
    return np.array([result.score for _, result in detector.score_files(images)])


def test_auto_falls_back_to_the_cpu_with_the_same_scores(
    claims_cuda: None, sample_model: Path, sample_dataset: Path
) -> None:
    model = load_model(sample_model)
    images = sorted((sample_dataset / "test").rglob("*.png"))[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ONNX Runtime warns that CUDA is not there
        auto = Detector(model, "auto")
    assert auto.session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(_scores(auto, images), _scores(Detector(model, "cpu"), images))


def test_cuda_asked_for_but_not_started_is_a_config_error(
    claims_cuda: None, sample_model: Path
) -> None:
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="failed to start"):
        warnings.simplefilter("ignore")
        Detector(load_model(sample_model), "cuda")

"""Torch-free scoring: the model file's ONNX feature graph on ONNX Runtime, then NumPy.

This is what `anomaly_detector.py` runs. Importing it costs a fraction of a second, where
torch and timm would cost about three.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .images import ImageError, Preprocess
from .model_file import Model
from .pipeline import preprocessed_batches, stack
from .scoring import PatchScores, score_features

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime providers for auto, cpu or cuda; cuda without support is an error."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return [PROVIDERS["cpu"]]
    if device == "cuda" and PROVIDERS["cuda"] not in available:
        raise ValueError(
            "--device cuda was asked for, but ONNX Runtime has no CUDA support here "
            "(no GPU, or the onnxruntime-gpu package is not installed)"
        )
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return [p for p in (PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]


class Detector:
    """A loaded model, ready to score many images with one graph session."""

    def __init__(self, model: Model, device: str = "auto") -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            model.feature_graph, options, providers=onnx_providers(device)
        )
        self.model = model
        self.preprocess = Preprocess.from_dict(model.settings["preprocess"])
        self.image_score = model.settings["image_score"]
        self.bank_norms = np.einsum("ij,ij->i", model.memory_bank, model.memory_bank)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) preprocessed images to (B, C, h, w) patch features."""
        return self.session.run(None, {"images": images})[0]

    def score_arrays(self, images: np.ndarray) -> list[PatchScores]:
        return score_features(
            self.features(images), self.model.memory_bank, self.image_score, self.bank_norms
        )

    def score_files(
        self, paths: Iterable[Path | str], batch_size: int = 8
    ) -> Iterator[tuple[Path | str, PatchScores | ImageError]]:
        """Each path with its result or its error, in input order, decoding in the background."""
        for items in preprocessed_batches(paths, self.preprocess, batch_size):
            positions, arrays = stack(items)
            results: dict[int, PatchScores] = {}
            if arrays is not None:
                results = dict(zip(positions, self.score_arrays(arrays), strict=True))
            for index, (path, value) in enumerate(items):
                yield path, results.get(index, value)

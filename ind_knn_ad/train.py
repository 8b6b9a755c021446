"""The whole fit as one call: features, the method's model, threshold, graph export,
evaluation.

make_model.py, the benchmarks and the tests all go through here, so they measure the same
thing the user runs. Every method fits on the same patch features and exports the same
feature graph; only what is kept of the features differs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import padim, spade
from .coreset import coreset_size
from .data import Dataset, TestImage
from .device import select_device
from .evaluate import Evaluation, evaluate
from .extractor import FeatureExtractor, FitSettings, TrainFeatures, extract_features
from .methods import make_scorer
from .model_file import FORMAT, METHODS, Model, required_version
from .patchcore import fit
from .pipeline import images_per_batch
from .provenance import package_versions
from .scoring import PatchScores
from .threshold import AUTO, auto_threshold

# (stage description, total) -> context yielding a callback that takes "items done".
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None] | None]]


def no_progress(description: str, total: int) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class TrainResult:
    model: Model
    evaluation: Evaluation | None


def train(
    dataset: Dataset,
    settings: FitSettings,
    threshold: float | str = AUTO,
    device: str = "auto",
    weights: Path | None = None,
    batch_size: int | None = None,
    progress: ProgressFactory = no_progress,
    method: str = "patchcore",
    each: Callable[[TestImage, PatchScores], None] | None = None,
) -> TrainResult:
    """Fit `method` on `dataset.train`; evaluate on `dataset.test` when it has any images
    (`each` sees every test result, as in `evaluate`).

    The backbone, layers, preprocessing and seed of `settings` apply to every method; its
    coreset fraction and image score only to PatchCore.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method != "patchcore" and settings.image_score != "max":
        raise ValueError(f"image score {settings.image_score!r} is for patchcore only")
    extractor = FeatureExtractor(settings, select_device(device), weights)
    # 16 images at 224 px, fewer for larger inputs, but one per core at least.
    batch_size = batch_size or images_per_batch(settings.preprocess.size, 16, extractor.workers)
    with progress("Feature extraction", len(dataset.train)) as callback:
        features = extract_features(
            extractor, dataset.train, settings.preprocess, batch_size, callback
        )
    model = fit_method(method, extractor, features, settings, threshold, dataset.name, progress)
    del features
    evaluation = None
    if dataset.test:
        scorer = make_scorer(model, settings.preprocess)
        with progress("Testing", len(dataset.test)) as callback:
            evaluation = evaluate(
                lambda images: scorer(extractor(images), images),
                dataset,
                settings.preprocess,
                model.threshold,
                batch_size,
                callback,
                each,
            )
    return TrainResult(model, evaluation)


def fit_method(
    method: str,
    extractor: FeatureExtractor,
    features: TrainFeatures,
    settings: FitSettings,
    threshold: float | str = AUTO,
    dataset: str = "custom",
    progress: ProgressFactory = no_progress,
) -> Model:
    """The model of `method` from training features, with its threshold and graph."""
    images, positions, channels = features.features.shape
    if method == "patchcore":
        size = coreset_size(images * positions, settings.coreset_fraction)
        with progress("Coreset selection", size) as callback:
            return fit(extractor, features, settings, threshold, dataset, callback)
    if method == "padim":
        chosen = padim.choose_channels(channels, padim.CHANNELS, settings.seed)
        with progress("Gaussian fit", positions) as callback:
            gaussians = padim.fit_gaussians(features.features, chosen, progress=callback)
        held_out = gaussians.holdout_scores
        tensors = {
            "channels": gaussians.channels,
            "mean": gaussians.mean,
            "inverse_covariance": gaussians.inverse_covariance,
        }
        extra = {
            "channels": len(chosen),
            "seed": settings.seed,
            "regularisation": padim.REGULARISATION,
        }
        image_score = "max"
    else:
        neighbours = spade.neighbour_count(images)
        vectors = spade.image_vectors(features.features)
        held_out = spade.holdout_scores(vectors, neighbours)
        tensors = {"train_patches": features.features, "image_vectors": vectors}
        extra = {"neighbours": neighbours, "image_vector": "mean of the patch features"}
        image_score = "knn_mean"
    if threshold == AUTO:
        value, threshold_info = auto_threshold(held_out)
    else:
        value, threshold_info = float(threshold), {"rule": "fixed, given by --threshold"}
    model_settings: dict[str, Any] = {
        "format": FORMAT,
        "format_version": required_version(settings.preprocess.to_dict()),
        "method": method,
        "backbone": settings.backbone,
        "layers": list(settings.resolved_layers()),
        "neighbourhood": settings.neighbourhood,
        "border": settings.border,
        "preprocess": settings.preprocess.to_dict(),
        "feature_dim": int(channels),
        "feature_grid": list(features.grid),
        "image_score": image_score,
        "threshold": {"value": value, **threshold_info},
        method: extra,
        "train_images": int(images),
        "dataset": dataset,
        "versions": package_versions(),
    }
    graph = extractor.export_onnx(settings.preprocess.size)
    return Model(model_settings, graph, {k: np.ascontiguousarray(v) for k, v in tensors.items()})

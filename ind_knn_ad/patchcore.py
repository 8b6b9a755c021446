"""PatchCore fitting: patch features of good images -> coreset memory bank -> model.

Scoring lives in `scoring` (NumPy) and runs the same for features computed here and for
features from the exported ONNX graph in `runtime`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import detectability
from .coreset import coreset_size, greedy_coreset
from .extractor import FeatureExtractor, FitSettings, Progress, TrainFeatures
from .images import Preprocess
from .methods import make_scorer
from .model_file import FORMAT, Model, required_version
from .provenance import package_versions
from .threshold import AUTO, auto_threshold, holdout_scores


def fit(
    extractor: FeatureExtractor,
    train: TrainFeatures,
    settings: FitSettings,
    threshold: float | str = AUTO,
    dataset: str = "custom",
    progress: Progress | None = None,
) -> Model:
    """Coreset memory bank from training features, threshold, and the exported graph."""
    images, patches, channels = train.features.shape
    flat = train.features.reshape(-1, channels)
    size = coreset_size(flat.shape[0], settings.coreset_fraction)
    chosen = greedy_coreset(flat, size, settings.projection_dim, settings.seed, progress)
    bank = np.ascontiguousarray(flat[chosen])
    if threshold == AUTO:
        scores = holdout_scores(
            train.features,
            train.grid,
            bank,
            chosen // patches,
            settings.image_score,
            seed=settings.seed,
            regions=train.regions,
        )
        value, threshold_info = auto_threshold(scores)
    else:
        value, threshold_info = float(threshold), {"rule": "fixed, given by --threshold"}
    model_settings = {
        "format": FORMAT,
        "format_version": required_version(settings.preprocess.to_dict()),
        "method": "patchcore",
        "backbone": settings.backbone,
        "layers": list(settings.resolved_layers()),
        "neighbourhood": settings.neighbourhood,
        "border": settings.border,
        "preprocess": settings.preprocess.to_dict(),
        "feature_dim": int(channels),
        "feature_grid": list(train.grid),
        "image_score": settings.image_score,
        "threshold": {"value": value, **threshold_info},
        "coreset": {
            "fraction": settings.coreset_fraction,
            "size": int(size),
            "total_patches": int(flat.shape[0]),
            "projection_dim": settings.projection_dim,
            "seed": settings.seed,
        },
        "train_images": int(images),
        "dataset": dataset,
        "versions": package_versions(),
    }
    graph = extractor.export_onnx(settings.preprocess.size)
    model = Model(model_settings, graph, {"memory_bank": bank})
    # Each damaged image is scored without its own patches: the bank must hold others'.
    if train.paths and len(np.unique(chosen // patches)) > 1:
        model_settings["detectability"] = _detectability(
            model, extractor, train, chosen // patches, settings.preprocess
        )
    return model


def _detectability(
    model: Model,
    extractor: FeatureExtractor,
    train: TrainFeatures,
    sources: np.ndarray,
    preprocess: Preprocess,
) -> list[dict]:
    """Synthetic defects on held-out training images, scored as the threshold's held-out
    images are: against the bank without the image's own patches."""

    def held_out(features: np.ndarray, images: np.ndarray, image: int) -> list[float]:
        bank = np.ascontiguousarray(model.tensors["memory_bank"][sources != image])
        without = replace(model, tensors={"memory_bank": bank})
        scorer = make_scorer(without, preprocess, maps=False)
        return [result.score for result in scorer(features, images)]

    threshold, seed = model.threshold, model.settings["coreset"]["seed"]
    return detectability.measure(train.paths, preprocess, extractor, held_out, threshold, seed)

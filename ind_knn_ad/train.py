"""The whole fit as one call: features, the method's model, threshold, graph export,
evaluation.

make_model.py, the benchmarks and the tests all go through here, so they measure the same
thing the user runs. Every method fits on the same patch features and exports the same
feature graph; only what is kept of the features differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ind_knn_ad import methods
from ind_knn_ad.calibration import detectability
from ind_knn_ad.calibration.threshold import AUTO, auto_threshold
from ind_knn_ad.config import BATCH_IMAGES, FitConfig
from ind_knn_ad.errors import ConfigError
from ind_knn_ad.features.augment import NONE, views_of
from ind_knn_ad.features.device import select_device
from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures, extract_features
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.datasets import Dataset, TestImage
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.methods.fitting import ProgressFactory, no_progress
from ind_knn_ad.methods.patchcore.streamed import streamed_features
from ind_knn_ad.model_file.provenance import package_versions
from ind_knn_ad.model_file.schema import FORMAT, Model, required_version
from ind_knn_ad.report.evaluate import Evaluation, evaluate


@dataclass
class TrainResult:
    model: Model
    evaluation: Evaluation | None


def find_method(config: FitConfig) -> tuple[methods.Method, str]:
    """The method of `config` and the image-score rule it stores for `config.image_score`;
    ConfigError, naming the methods that have the rule (or take views), when it has no such
    rule or cannot take the views of `config.augment`."""
    method = methods.find(config.method)
    if method is None:
        known = ", ".join(methods.names())
        raise ConfigError(f"method must be one of {known}, not {config.method!r}", "method")
    rule = config.image_score or method.image_scores[0]
    if rule not in method.image_scores:
        having = " or ".join(methods.having_image_score(rule))
        raise ConfigError(f"image score {rule!r} is for {having} only", "image_score")
    if views_of(config.augment) and not methods.fitter(config.method).takes_views:
        taking = " or ".join(methods.taking_views())
        raise ConfigError(f"augment {config.augment!r} is for {taking} only", "augment")
    return method, rule


def train(
    config: FitConfig,
    dataset: Dataset,
    *,
    threshold: float | str = AUTO,
    device: str = "auto",
    weights: Path | None = None,
    batch_size: int | None = None,
    progress: ProgressFactory = no_progress,
    each: Callable[[TestImage, PatchScores, np.ndarray], None] | None = None,
    stream: int | None = None,
) -> TrainResult:
    """Fit `config.method` on `dataset.train`; evaluate on `dataset.test` when it has any
    images (`each` sees every test result, as in `evaluate`).

    The backbone, layers, preprocessing and seed of `config` apply to every method; the
    rest to the methods that use them (`methods`). With `stream` (images per chunk:
    `patchcore.memory.Plan`), the training features are never all held at once
    (PatchCore only).
    """
    find_method(config)
    if stream is not None and not methods.fitter(config.method).streams:
        raise ConfigError(f"method {config.method!r} cannot fit streamed features", "method")
    extractor = FeatureExtractor(config, select_device(device), weights)
    preprocess = config.preprocess
    batch_size = batch_size or images_per_batch(preprocess.size, BATCH_IMAGES, extractor.workers)
    if stream is not None:
        features = streamed_features(
            extractor, list(dataset.train), config, stream, batch_size, progress
        )
    else:
        with progress("Feature extraction", len(dataset.train)) as callback:
            features = extract_features(
                extractor, dataset.train, preprocess, batch_size, callback, config.augment
            )
    model = fit_method(
        config, extractor, features, threshold=threshold, dataset=dataset.name, progress=progress
    )
    del features
    evaluation = None
    if dataset.test:
        scorer = methods.make_scorer(model, preprocess)
        with progress("Testing", len(dataset.test)) as callback:
            evaluation = evaluate(
                lambda images, cuts: scorer(extractor(images), cuts),
                dataset,
                preprocess,
                model.threshold,
                batch_size,
                callback,
                each,
            )
    return TrainResult(model, evaluation)


def fit_method(
    config: FitConfig,
    extractor: FeatureExtractor,
    features: TrainFeatures,
    *,
    threshold: float | str = AUTO,
    dataset: str = "custom",
    progress: ProgressFactory = no_progress,
) -> Model:
    """The model of `config.method` from training features: the settings every method
    shares, the method's own tensors and settings, the threshold and the exported graph."""
    _, image_score = find_method(config)
    views = 1 + len(views_of(config.augment))
    if features.views != views:
        raise ValueError(f"features of {features.views} views per image; augment makes {views}")
    images, _positions, channels = features.features.shape
    fitted = methods.fitter(config.method).fit(features, config, image_score, progress)
    model_settings: dict[str, Any] = {
        "format": FORMAT,
        "format_version": required_version(config.preprocess.to_dict()),
        "method": config.method,
        "backbone": config.backbone,
        "layers": list(config.resolved_layers()),
        "neighbourhood": config.neighbourhood,
        "border": config.border,
        "preprocess": config.preprocess.to_dict(),
        # Only when views were added, so a default fit's settings stay as they were.
        **({"augment": config.augment} if config.augment != NONE else {}),
        "feature_dim": int(channels),
        "feature_grid": list(features.grid),
        "image_score": image_score,
        "threshold": {},  # set below, from scores of the model
        **fitted.settings,
        "train_images": int(images),
        "dataset": dataset,
        "versions": package_versions(),
    }
    graph = extractor.export_onnx(config.preprocess.size)
    tensors = {name: np.ascontiguousarray(array) for name, array in fitted.tensors.items()}
    model = Model(model_settings, graph, tensors)
    _set_threshold(model, fitted, extractor, threshold)
    return model


def _set_threshold(
    model: Model, fitted: methods.Fitted, extractor: FeatureExtractor, threshold: float | str
) -> None:
    """The threshold (automatic, from held-out and synthetic scores, or the one given) and
    what the model can see at it, into the model's settings."""
    damaged = [] if fitted.synthetic is None else fitted.synthetic(model, extractor)
    if threshold == AUTO:
        defects = np.array([defect.score for defect in damaged])
        value, threshold_info = auto_threshold(fitted.holdout_scores(), defects)
    else:
        value, threshold_info = float(threshold), {"rule": "fixed, given by --threshold"}
    model.settings["threshold"] = {"value": value, **threshold_info}
    if damaged:
        model.settings["detectability"] = detectability.caught(damaged, value)

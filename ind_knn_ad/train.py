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

from ind_knn_ad import methods
from ind_knn_ad.calibration import detectability
from ind_knn_ad.calibration.threshold import AUTO, auto_threshold
from ind_knn_ad.features.augment import NONE, views_of
from ind_knn_ad.features.device import select_device
from ind_knn_ad.features.extractor import (
    FeatureExtractor,
    FitConfig,
    TrainFeatures,
    extract_features,
)
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.datasets import Dataset, TestImage
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.methods.fitting import ProgressFactory
from ind_knn_ad.model_file.provenance import package_versions
from ind_knn_ad.model_file.schema import FORMAT, Model, required_version
from ind_knn_ad.report.evaluate import Evaluation, evaluate


def no_progress(description: str, total: int) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class TrainResult:
    model: Model
    evaluation: Evaluation | None


def find_method(name: str, image_score: str, augment: str = NONE) -> tuple[methods.Method, str]:
    """The method called `name` and the image-score rule it stores for `image_score`;
    ValueError, naming the methods that have the rule (or take views), when it has no such
    rule or cannot take the views of `augment`."""
    method = methods.find(name)
    if method is None:
        known = ", ".join(methods.names())
        raise ValueError(f"method must be one of {known}, not {name!r}")
    rule = method.image_score_for(image_score)
    if rule is None:
        having = " or ".join(methods.having_image_score(image_score))
        raise ValueError(f"image score {image_score!r} is for {having} only")
    if views_of(augment) and not methods.fitter(name).takes_views:
        raise ValueError(f"augment {augment!r} is for {' or '.join(methods.taking_views())} only")
    return method, rule


def train(
    dataset: Dataset,
    settings: FitConfig,
    threshold: float | str = AUTO,
    device: str = "auto",
    weights: Path | None = None,
    batch_size: int | None = None,
    progress: ProgressFactory = no_progress,
    method: str = methods.DEFAULT,
    each: Callable[[TestImage, PatchScores, np.ndarray], None] | None = None,
) -> TrainResult:
    """Fit `method` on `dataset.train`; evaluate on `dataset.test` when it has any images
    (`each` sees every test result, as in `evaluate`).

    The backbone, layers, preprocessing and seed of `settings` apply to every method; the
    rest to the methods that use them (`methods`).
    """
    find_method(method, settings.image_score, settings.augment)
    extractor = FeatureExtractor(settings, select_device(device), weights)
    # 16 images at 224 px, fewer for larger inputs, but one per core at least.
    batch_size = batch_size or images_per_batch(settings.preprocess.size, 16, extractor.workers)
    with progress("Feature extraction", len(dataset.train)) as callback:
        features = extract_features(
            extractor, dataset.train, settings.preprocess, batch_size, callback, settings.augment
        )
    model = fit_method(method, extractor, features, settings, threshold, dataset.name, progress)
    del features
    evaluation = None
    if dataset.test:
        scorer = methods.make_scorer(model, settings.preprocess)
        with progress("Testing", len(dataset.test)) as callback:
            evaluation = evaluate(
                lambda images, cuts: scorer(extractor(images), cuts),
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
    settings: FitConfig,
    threshold: float | str = AUTO,
    dataset: str = "custom",
    progress: ProgressFactory = no_progress,
) -> Model:
    """The model of `method` from training features: the settings every method shares,
    the method's own tensors and settings, the threshold and the exported graph."""
    _, image_score = find_method(method, settings.image_score, settings.augment)
    views = 1 + len(views_of(settings.augment))
    if features.views != views:
        raise ValueError(f"features of {features.views} views per image; augment makes {views}")
    images, _positions, channels = features.features.shape
    fitted = methods.fitter(method).fit(features, settings, image_score, progress)
    model_settings: dict[str, Any] = {
        "format": FORMAT,
        "format_version": required_version(settings.preprocess.to_dict()),
        "method": method,
        "backbone": settings.backbone,
        "layers": list(settings.resolved_layers()),
        "neighbourhood": settings.neighbourhood,
        "border": settings.border,
        "preprocess": settings.preprocess.to_dict(),
        # Only when views were added, so a default fit's settings stay as they were.
        **({"augment": settings.augment} if settings.augment != NONE else {}),
        "feature_dim": int(channels),
        "feature_grid": list(features.grid),
        "image_score": image_score,
        "threshold": {},  # set below, from scores of the model
        **fitted.settings,
        "train_images": int(images),
        "dataset": dataset,
        "versions": package_versions(),
    }
    graph = extractor.export_onnx(settings.preprocess.size)
    tensors = {name: np.ascontiguousarray(array) for name, array in fitted.tensors.items()}
    model = Model(model_settings, graph, tensors)
    damaged = [] if fitted.synthetic is None else fitted.synthetic(model, extractor)
    if threshold == AUTO:
        defects = np.array([defect.score for defect in damaged])
        value, threshold_info = auto_threshold(fitted.holdout_scores(), defects)
    else:
        value, threshold_info = float(threshold), {"rule": "fixed, given by --threshold"}
    model.settings["threshold"] = {"value": value, **threshold_info}
    if damaged:
        model.settings["detectability"] = detectability.caught(damaged, value)
    return model

"""The whole fit as one call: features, coreset bank, threshold, graph export, evaluation.

make_model.py, the benchmarks and the tests all go through here, so they measure the same
thing the user runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from .coreset import coreset_size
from .data import Dataset
from .evaluate import Evaluation, evaluate
from .model_file import Model
from .patchcore import FeatureExtractor, PatchCoreSettings, extract_features, fit, select_device
from .threshold import AUTO

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
    settings: PatchCoreSettings,
    threshold: float | str = AUTO,
    device: str = "auto",
    weights: Path | None = None,
    batch_size: int = 16,
    progress: ProgressFactory = no_progress,
) -> TrainResult:
    """Fit on `dataset.train`; evaluate on `dataset.test` when it has any images."""
    extractor = FeatureExtractor(settings, select_device(device), weights)
    with progress("Feature extraction", len(dataset.train)) as callback:
        features = extract_features(
            extractor, dataset.train, settings.preprocess, batch_size, callback
        )
    patches = features.features.shape[0] * features.features.shape[1]
    with progress("Coreset selection", coreset_size(patches, settings.coreset_fraction)) as cb:
        model = fit(extractor, features, settings, threshold, dataset.name, cb)
    del features
    evaluation = None
    if dataset.test:
        with progress("Testing", len(dataset.test)) as callback:
            evaluation = evaluate(
                extractor,
                dataset,
                settings.preprocess,
                model.memory_bank,
                settings.image_score,
                model.threshold,
                batch_size,
                callback,
            )
    return TrainResult(model, evaluation)

"""Evaluation on a labelled test set, with the metrics this field compares methods by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .data import GOOD, Dataset, TestImage
from .images import Preprocess, load_image
from .pipeline import preprocessed_batches, stack
from .scoring import PatchScores, anomaly_map

# (B, 3, H, W) preprocessed images to their results, whichever method made the model.
ScoreFn = Callable[[np.ndarray], list[PatchScores]]


@dataclass
class Evaluation:
    """Scores and metrics; the confusion matrix is [[TN, FP], [FN, TP]] (rows: actual)."""

    image_rocauc: float | None
    pixel_rocauc: float | None
    per_defect_rocauc: dict[str, float]
    threshold: float
    confusion_matrix: list[list[int]]
    f1: float
    best_f1: float
    best_f1_threshold: float
    images: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def _best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


def evaluate(
    score: ScoreFn,
    dataset: Dataset,
    preprocess: Preprocess,
    threshold: float,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    each: Callable[[TestImage, PatchScores], None] | None = None,
) -> Evaluation:
    """Score every test image and compute image and (where masks exist) pixel metrics.

    `each` sees every test image with its result, for callers that want the maps too
    (the contact sheet) without keeping them all here.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    by_path = {item.path: item for item in dataset.test}
    width, height = preprocess.size
    scores: list[float] = []
    pixel_scores, pixel_labels = [], []
    done = 0
    for items in preprocessed_batches(by_path, preprocess, batch_size):
        for _, value in items:
            if not isinstance(value, np.ndarray):
                raise value
        _, arrays = stack(items)
        for (path, _), result in zip(items, score(arrays), strict=True):
            scores.append(result.score)
            if each is not None:
                each(by_path[path], result)
            mask = by_path[path].mask
            if dataset.has_masks:
                pixel_scores.append(anomaly_map(result.patch_map, preprocess.size).ravel())
                if mask is None:
                    pixel_labels.append(np.zeros(width * height, dtype=np.uint8))
                else:
                    # An aligned cut follows the part's pose, found on the photo.
                    photo = load_image(path) if preprocess.align is not None else None
                    with Image.open(mask) as image:
                        truth = preprocess.geometry(image.convert("L"), photo)
                    pixel_labels.append((np.asarray(truth) > 127).ravel().astype(np.uint8))
        done += len(items)
        if progress is not None:
            progress(done)
    labels = np.array([item.label for item in dataset.test])
    score_array = np.array(scores)
    both = len(set(labels)) == 2
    per_defect = {}
    if both:
        for defect in sorted({item.defect_type for item in dataset.test} - {GOOD}):
            keep = [i for i, item in enumerate(dataset.test) if item.defect_type in (GOOD, defect)]
            per_defect[defect] = float(roc_auc_score(labels[keep], score_array[keep]))
    pixel_auc = None
    if pixel_scores:
        truth = np.concatenate(pixel_labels)
        if 0 < truth.sum() < truth.size:
            pixel_auc = float(roc_auc_score(truth, np.concatenate(pixel_scores)))
    predicted = (score_array >= threshold).astype(int)
    best_f1, best_threshold = _best_f1(labels, score_array) if both else (float("nan"),) * 2
    return Evaluation(
        image_rocauc=float(roc_auc_score(labels, score_array)) if both else None,
        pixel_rocauc=pixel_auc,
        per_defect_rocauc=per_defect,
        threshold=threshold,
        confusion_matrix=confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        f1=float(f1_score(labels, predicted, zero_division=0.0)),
        best_f1=best_f1,
        best_f1_threshold=best_threshold,
        images=[
            {"file": str(item.path), "defect_type": item.defect_type, "score": score}
            for item, score in zip(dataset.test, scores, strict=True)
        ],
    )

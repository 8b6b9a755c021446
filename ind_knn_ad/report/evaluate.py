"""Evaluation on a labelled test set, with the metrics this field compares methods by."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ind_knn_ad.errors import ImageError
from ind_knn_ad.io.batches import preprocessed_batches, stack
from ind_knn_ad.io.datasets import GOOD, Dataset, TestImage
from ind_knn_ad.io.images import load_image, shown_name
from ind_knn_ad.io.preprocess import Prepared, Preprocess
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.report.heatmap import anomaly_map
from ind_knn_ad.report.metrics import PRO_MAX_FPR, aupro, pro_curve, sampled

# (B, 3, H, W) network inputs and the (B, H, W, 3) uint8 cuts they were made from to
# their results, whichever method made the model.
ScoreFn = Callable[[np.ndarray, np.ndarray], list[PatchScores]]
log = logging.getLogger(__name__)


def mask_labels(mask: Path, photo: Prepared, preprocess: Preprocess) -> np.ndarray | None:
    """A ground-truth mask cut as its photo was (the photo's size and pose, as prepared
    for scoring), as 0/1 labels per pixel; None, with a warning line naming the mask, when
    it cannot be read or is not the photo's size: that image then counts in the image
    metrics but not in the pixel ROC AUC."""
    try:
        truth = load_image(mask)
    except ImageError as error:
        log.warning("warning: %s; left out of the pixel ROC AUC", error)
        return None
    if truth.size != photo.size:
        log.warning(
            "warning: %s: mask is %dx%d, its image %dx%d; left out of the pixel ROC AUC",
            shown_name(mask),
            *truth.size,
            *photo.size,
        )
        return None
    cut = preprocess.geometry(truth.convert("L"), photo.pose)
    return (np.asarray(cut) > 127).ravel().astype(np.uint8)


@dataclass
class Evaluation:
    """Scores and metrics; the confusion matrix is [[TN, FP], [FN, TP]] (rows: actual).
    `image_aupr` is the area under the image-level precision-recall curve (average
    precision), `pixel_aupro` that under the PRO curve to an FPR of 0.3 (`metrics.py`);
    `curves` holds the pixel ROC and PRO curves, sampled, for the report."""

    image_rocauc: float | None
    pixel_rocauc: float | None
    per_defect_rocauc: dict[str, float]
    threshold: float
    confusion_matrix: list[list[int]]
    f1: float
    best_f1: float
    best_f1_threshold: float
    images: list[dict]
    image_aupr: float | None = None
    pixel_aupro: float | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def labelled_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the good and of the defective test images."""
        return scores_by_label(self.images)

    def better_cut(self) -> dict[str, float] | None:
        """The best-F1 threshold with its false alarms and misses, when it makes fewer
        errors on these labelled images than the threshold judged at (so an operating
        point is worth suggesting); else None."""
        if not np.isfinite(self.best_f1_threshold):
            return None
        (_, fp), (fn, _) = self.confusion_matrix
        (_, best_fp), (best_fn, _) = self.at(self.best_f1_threshold).confusion_matrix
        if best_fp + best_fn >= fp + fn:
            return None
        return {"threshold": self.best_f1_threshold, "false_alarms": best_fp, "misses": best_fn}

    def at(self, threshold: float) -> Evaluation:
        """The same scores judged at another threshold (after a recalibration)."""
        matrix, f1 = _judged(*_labelled(self.images), threshold)
        return replace(self, threshold=threshold, confusion_matrix=matrix, f1=f1)


def _labelled(images: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of an evaluation's `images`, 1 for defective."""
    labels = np.array([image["defect_type"] != GOOD for image in images], int)
    return labels, np.array([image["score"] for image in images], np.float64)


def scores_by_label(images: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the good and of the defective images among an evaluation's `images`, also
    as a results file holds them."""
    labels, scores = _labelled(images)
    return scores[labels == 0], scores[labels == 1]


def _judged(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[list[list[int]], float]:
    """The confusion matrix and F1 of flagging score >= threshold."""
    predicted = (scores >= threshold).astype(int)
    matrix = confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    return matrix, float(f1_score(labels, predicted, zero_division=0.0))


def _best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


def _score_test_images(
    score: ScoreFn,
    dataset: Dataset,
    preprocess: Preprocess,
    batch_size: int,
    progress: Callable[[int], None] | None,
    each: Callable[[TestImage, PatchScores, np.ndarray], None] | None,
) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """Each test image's score, and the blurred maps and mask labels of those that have
    pixel labels, decoding each file once."""
    by_path = {item.path: item for item in dataset.test}
    width, height = preprocess.size
    scores: list[float] = []
    pixel_scores, pixel_labels = [], []
    done = 0
    for items in preprocessed_batches(by_path, preprocess, batch_size):
        for _, value in items:
            if not isinstance(value, Prepared):
                raise value
        _, arrays, cuts = stack(items)
        for (path, prepared), result in zip(items, score(arrays, cuts), strict=True):
            scores.append(result.score)
            if each is not None:
                each(by_path[path], result, prepared.cut)
            mask = by_path[path].mask
            if dataset.has_masks:
                if mask is None:
                    labels = np.zeros(width * height, dtype=np.uint8)
                else:
                    labels = mask_labels(mask, prepared, preprocess)
                if labels is not None:
                    pixel_labels.append(labels)
                    pixel_scores.append(anomaly_map(result.patch_map, preprocess.size).ravel())
        done += len(items)
        if progress is not None:
            progress(done)
    return scores, pixel_scores, pixel_labels


def evaluate(
    score: ScoreFn,
    dataset: Dataset,
    preprocess: Preprocess,
    threshold: float,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    each: Callable[[TestImage, PatchScores, np.ndarray], None] | None = None,
) -> Evaluation:
    """Score every test image and compute image and (where masks exist) pixel metrics.

    `each` sees every test image with its result and its (H, W, 3) uint8 cut, for callers
    that want the maps and pictures too (the contact sheet) without keeping them all here
    or decoding the file again.
    """
    scores, pixel_scores, pixel_labels = _score_test_images(
        score, dataset, preprocess, batch_size, progress, each
    )
    labels = np.array([item.label for item in dataset.test])
    score_array = np.array(scores)
    both = len(set(labels)) == 2
    per_defect = {}
    if both:
        for defect in sorted({item.defect_type for item in dataset.test} - {GOOD}):
            keep = [i for i, item in enumerate(dataset.test) if item.defect_type in (GOOD, defect)]
            per_defect[defect] = float(roc_auc_score(labels[keep], score_array[keep]))
    width, height = preprocess.size
    pixel_auc, pixel_aupro, curves = _pixel_metrics(
        [s.reshape(height, width) for s in pixel_scores],
        [m.reshape(height, width) for m in pixel_labels],
    )
    matrix, f1 = _judged(labels, score_array, threshold)
    best_f1, best_threshold = _best_f1(labels, score_array) if both else (float("nan"),) * 2
    return Evaluation(
        image_rocauc=float(roc_auc_score(labels, score_array)) if both else None,
        pixel_rocauc=pixel_auc,
        per_defect_rocauc=per_defect,
        threshold=threshold,
        confusion_matrix=matrix,
        f1=f1,
        best_f1=best_f1,
        best_f1_threshold=best_threshold,
        images=[
            {"file": str(item.path), "defect_type": item.defect_type, "score": score}
            for item, score in zip(dataset.test, scores, strict=True)
        ],
        image_aupr=float(average_precision_score(labels, score_array)) if both else None,
        pixel_aupro=pixel_aupro,
        curves=curves,
    )


def _pixel_metrics(
    maps: list[np.ndarray], masks: list[np.ndarray]
) -> tuple[float | None, float | None, dict[str, list[list[float]]]]:
    """Pixel ROC AUC, AUPRO and their curves (sampled) over the images with pixel labels;
    None where no mask has both defective and good pixels."""
    if not maps:
        return None, None, {}
    truth = np.concatenate([mask.ravel() for mask in masks])
    if not 0 < truth.sum() < truth.size:
        return None, None, {}
    values = np.concatenate([amap.ravel() for amap in maps])
    fpr, tpr, _ = roc_curve(truth, values)
    curves = {"pixel_roc": sampled(fpr, tpr, 1.0)}
    pro = pro_curve(maps, masks)
    assert pro is not None  # some pixels are defective, some good
    curves["pro"] = sampled(*pro, PRO_MAX_FPR)
    return float(roc_auc_score(truth, values)), aupro(*pro), curves

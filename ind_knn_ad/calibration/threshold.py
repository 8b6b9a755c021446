"""Setting the decision threshold from good images only.

Kept apart from the model: the model gives scores (for PatchCore's held-out images,
`methods.patchcore.held_out`), this module decides where "defective" starts, and records
how, so a threshold in a model file can always be explained.
"""

from __future__ import annotations

import numpy as np

from ind_knn_ad.errors import DatasetError

AUTO = "auto"
# Fewer held-out images than this: the threshold is placed by the synthetic defects
# (`seen_cut`); from this many on, their mean and spread are steady enough for
# mean + 3 std (bench/threshold_rules.py on bench/flags.py's fits).
FEW = 50
# The synthetic defects' score quantile (%) where few-image fits cut: below it are the ones
# too small or faint to see at all, which say nothing about where to cut.
SEEN_QUANTILE = 25
# Held-out scores at most this share of the features' own scale are rounding, not
# differences: scoring the same image again differs by about 1e-6 of it (ONNX against
# torch features), so a threshold placed among such scores flags the training images.
RESOLUTION = 1e-4


def distinct_scores(scores: np.ndarray, scale: float) -> np.ndarray:
    """`scores`, or DatasetError when every one is rounding against `scale` (the method's
    distance of a typical feature from zero): training images alike in every feature give
    the automatic threshold nothing to go on, and it would flag them all."""
    if scores.size and float(scores.max()) > RESOLUTION * scale:
        return scores
    return _alike(scores)


def _alike(scores: np.ndarray) -> np.ndarray:
    highest = float(scores.max()) if scores.size else 0.0
    raise DatasetError(
        f"every training image scores {highest:.3g} against the others: the images are alike "
        "in every feature, and a threshold placed there would flag them all; add varied "
        "good images or give a fixed threshold"
    )


def auto_threshold(
    scores: np.ndarray, defects: np.ndarray | None = None, sigmas: float = 3.0
) -> tuple[float, dict]:
    """The threshold from held-out good scores and, with few of them, synthetic defects.

    From FEW held-out images on: mean + `sigmas` standard deviations of their scores. One
    odd training image cannot drag it up the way it drags the maximum (bench/accuracy.py).

    Below FEW, with `defects` (scores of synthetic defects on held-out images): `seen_cut`,
    the lower quartile of the defects. A handful of held-out images neither shows how far
    new good images reach above them (on bottle_256 at 5 to 20 images they reached well
    above; bench/flags.py) nor gives a steady standard deviation, so a cut placed by them
    (their maximum, or halfway from it to the defects) moves with the draw; the defects,
    dozens of them, show where the model starts to see one. Where that falls among the
    held-out scores, the expected false alarms say so.

    Returns the value and the statistics stored in the model. DatasetError where the
    rule gives no positive threshold (identical training images): it would flag every image.
    """
    mean, std = float(scores.mean()), float(scores.std())
    holdout = {
        "count": int(scores.size),
        "mean": mean,
        "std": std,
        "min": float(scores.min()),
        "max": float(scores.max()),
        "p95": float(np.percentile(scores, 95)),
    }
    details: dict = {}
    # A defect whose features overflowed is caught at any cut: it places nothing.
    defects = np.empty(0) if defects is None else defects[np.isfinite(defects)]
    if defects.size and scores.size < FEW:
        value = seen_cut(defects)
        details["rule"] = (
            f"the lower quartile of {defects.size} synthetic defects on {scores.size} "
            f"leave-one-image-out images of train/good (fewer than {FEW} held out)"
        )
        details["synthetic"] = {"count": int(defects.size), "caught": int((defects >= value).sum())}
    else:
        value = mean + sigmas * std
        details["rule"] = f"mean + {sigmas:g} std of leave-one-image-out scores of train/good"
    if not value > 0:
        _alike(scores)
    alarms = int((scores >= value).sum())
    details["holdout"] = holdout
    details["expected_false_alarms"] = {
        "held_out_flagged": alarms,
        "held_out": int(scores.size),
        "upper_95": false_alarm_bound(alarms, int(scores.size)),
    }
    return value, details


def seen_cut(defects: np.ndarray, quantile: float = SEEN_QUANTILE) -> float:
    """The `quantile` (%) of the synthetic defects' scores: it catches the defects the model
    sees and lets the faintest pass, wherever the few held-out good scores happen to lie."""
    return float(np.percentile(defects, quantile))


def cut_counts(
    good: np.ndarray, defective: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct threshold between good and defective scores (distances, never
    negative), and at each the good images flagged and the defective ones caught."""
    scores = np.unique(np.concatenate([good, defective]))
    # Below the lowest flags all, above the highest none; between, halfway between neighbours.
    lowest, highest = scores[0] / 2, scores[-1] + max(scores[-1], 1.0) / 2
    cuts = np.concatenate([[lowest], (scores[:-1] + scores[1:]) / 2, [highest]])
    # Images at or above each cut, by binary search: no (cuts x images) table.
    false_alarms = good.size - np.searchsorted(np.sort(good), cuts, side="left")
    caught = defective.size - np.searchsorted(np.sort(defective), cuts, side="left")
    return cuts, false_alarms, caught


def false_alarm_bound(flagged: int, count: int, confidence: float = 0.95) -> float:
    """Upper `confidence` bound on the rate of good images flagged, from `flagged` of
    `count` held-out good images (Clopper-Pearson). Held-out images are not new ones: a whole
    bank without their patches scores them a little higher than new good images
    (bench/few_shot.py), a coreset with their holes filled a little lower
    (bench/held_out.py); `bench/threshold_rules.py --bound` checks the bound on test images."""
    from scipy.stats import beta

    if flagged >= count:
        return 1.0
    return float(beta.ppf(confidence, flagged + 1, count - flagged))

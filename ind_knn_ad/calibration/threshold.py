"""Setting the decision threshold from good images only.

Kept apart from the model: the model gives scores, this module decides where "defective"
starts, and records how, so a threshold in a model file can always be explained.
"""

from __future__ import annotations

import numpy as np

from ind_knn_ad.methods.patchcore.image_score import score_features

AUTO = "auto"
# Training images scored for the automatic threshold, at most: enough for a stable mean and
# standard deviation, few enough that a fit on thousands of images is not dominated by it.
HOLDOUT_IMAGES = 200
# Training images searched for the patches that fill a held-out image's holes in the bank:
# enough to find a close cover, few enough to keep the search a small part of the fit
# (bench/held_out.py).
FILL_IMAGES = 64
# Fewer held-out images than this: the threshold is placed against synthetic defects
# (auto_threshold, bench/synthetic_threshold.py).
FEW = 20
_ROWS = 4096  # bank rows measured against one image's patches at a time


def holdout_scores(
    train_features: np.ndarray,
    grid: tuple[int, int],
    bank: np.ndarray,
    bank_sources: np.ndarray,
    image_score: str,
    limit: int = HOLDOUT_IMAGES,
    seed: int = 0,
    regions: np.ndarray | None = None,
    fillers: np.ndarray | None = None,
) -> np.ndarray:
    """Score training images against the bank without any patch taken from them.

    This is leave-one-image-out on the fitted bank: the image is judged as a new good image
    would be, at the cost of one nearest-neighbour search per image and no refit. But the
    coreset was chosen with the image in it, and where only it had patches, its rows are
    the only cover: taken out, they leave holes that a coreset chosen without the image
    would have covered with other images' patches. So each of its rows is replaced by the
    nearest patch of another training image (`fill_holes`); without this the held-out
    scores sat too high and the threshold missed defects (bench/held_out.py). A whole bank
    has no holes: there the replacements are rows it already holds.

    The bank grows with the training set, so scoring every image would cost time quadratic
    in it; beyond `limit` images a seeded random `limit` of them are scored. `regions`
    ((images, h*w) bool) are the patches each image is scored on, as scoring will;
    `fillers` are `fill_holes`'s, where the caller has them already.

    With augmentation an image's row holds its views' patches after its own h*w
    (`extractor.TrainFeatures`): the image alone is scored, its views are held out with
    it, and other images' views may fill its holes.
    """
    count, _patches, channels = train_features.shape
    positions = grid[0] * grid[1]
    images = np.arange(count)
    if count > limit:
        images = np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))
    if fillers is None:
        fillers = fill_holes(train_features, bank, bank_sources, seed)
    scores = np.empty(len(images), dtype=np.float64)
    for slot, image in enumerate(images):
        own = bank_sources == image
        others = np.concatenate([bank[~own], fillers[own]])
        patches = train_features[image, :positions]  # the image, not its views
        features = patches.reshape(1, *grid, channels).transpose(0, 3, 1, 2)
        counted = None if regions is None else regions[image].reshape(1, *grid)
        (result,) = score_features(features, others, image_score, maps=False, regions=counted)
        scores[slot] = result.score
    if not np.isfinite(scores).all():
        raise ValueError("training images score as infinite: their features overflow float32")
    return scores


def fill_holes(
    train_features: np.ndarray, bank: np.ndarray, bank_sources: np.ndarray, seed: int = 0
) -> np.ndarray:
    """For each bank row, the nearest patch of another training image than its own (or of
    its views), among at most FILL_IMAGES seeded ones: what covers its place when its image
    is held out."""
    count, _patches, channels = train_features.shape
    searched = np.arange(count)
    if count > FILL_IMAGES:
        searched = np.sort(np.random.default_rng(seed).choice(count, FILL_IMAGES, replace=False))
    rows = np.asarray(bank, np.float32)
    best = np.full(len(rows), np.inf)
    fillers = rows.copy()  # a row whose image is the only one searched keeps itself
    for image in searched:
        patches = train_features[image]
        squares = np.einsum("ij,ij->i", patches, patches)
        for start in range(0, len(rows), _ROWS):
            block = slice(start, start + _ROWS)
            distances = squares[None, :] - 2.0 * (rows[block] @ patches.T)
            nearest = np.argmin(distances, axis=1)
            value = distances[np.arange(len(nearest)), nearest]
            better = (value < best[block]) & (bank_sources[block] != image)
            best[block] = np.where(better, value, best[block])
            fillers[block][better] = patches[nearest[better]]
    return fillers.reshape(-1, channels)


def auto_threshold(
    scores: np.ndarray, defects: np.ndarray | None = None, sigmas: float = 3.0
) -> tuple[float, dict]:
    """The threshold from held-out good scores and, with few of them, synthetic defects.

    From FEW held-out images on: mean + `sigmas` standard deviations of their scores.
    Measured against the maximum, 4 std and the 95th percentile (bench/accuracy.py): it
    ties the best on bottle_256 and beats the maximum on screw_512, since one odd training
    image cannot drag it up the way it drags the maximum.

    Below FEW, with `defects` (scores of synthetic defects on held-out images): the cut
    with the fewest false alarms on the held-out images plus misses of the defects, each as
    a share. A standard deviation of a handful of scores is too loose to go 3 of them out,
    and those held-out scores sit above new good images' (bench/few_shot.py): the threshold
    landed above real defects. On the shared sets at 5 to 10 training images this halves
    the misses for some more false alarms, and leaves larger fits as they were
    (bench/synthetic_threshold.py).

    Returns the value and the statistics stored in the model.
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
        value = balanced_cut(scores, defects)
        details["rule"] = (
            f"fewest false alarms plus misses between {scores.size} leave-one-image-out scores "
            f"of train/good and {defects.size} synthetic defects on them (fewer than {FEW} "
            "held out)"
        )
        details["synthetic"] = {"count": int(defects.size), "caught": int((defects >= value).sum())}
    else:
        value = mean + sigmas * std
        details["rule"] = f"mean + {sigmas:g} std of leave-one-image-out scores of train/good"
    alarms = int((scores >= value).sum())
    details["holdout"] = holdout
    details["expected_false_alarms"] = {
        "held_out_flagged": alarms,
        "held_out": int(scores.size),
        "upper_95": false_alarm_bound(alarms, int(scores.size)),
    }
    return value, details


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


def balanced_cut(good: np.ndarray, defective: np.ndarray) -> float:
    """The middle one of the cuts with the least false-alarm share plus miss share."""
    cuts, false_alarms, caught = cut_counts(good, defective)
    cost = false_alarms / good.size + (defective.size - caught) / defective.size
    best = np.flatnonzero(cost <= cost.min() + 1e-12)
    return float(cuts[best[len(best) // 2]])


def false_alarm_bound(flagged: int, count: int, confidence: float = 0.95) -> float:
    """Upper `confidence` bound on the rate of good images flagged, from `flagged` of
    `count` held-out good images (Clopper-Pearson). Held-out images are judged against a
    bank without their own patches, which scores them a little higher than new good images
    (bench/few_shot.py), so the bound errs towards more alarms, not fewer."""
    from scipy.stats import beta

    if flagged >= count:
        return 1.0
    return float(beta.ppf(confidence, flagged + 1, count - flagged))

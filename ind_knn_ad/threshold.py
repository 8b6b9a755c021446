"""Setting the decision threshold from good images only.

Kept apart from the model: the model gives scores, this module decides where "defective"
starts, and records how, so a threshold in a model file can always be explained.
"""

from __future__ import annotations

import numpy as np

from .scoring import score_features

AUTO = "auto"
# Training images scored for the automatic threshold, at most: enough for a stable mean and
# standard deviation, few enough that a fit on thousands of images is not dominated by it.
HOLDOUT_IMAGES = 200
# Training images searched for the patches that fill a held-out image's holes in the bank:
# enough to find a close cover, few enough to keep the search a small part of the fit
# (bench/held_out.py).
FILL_IMAGES = 64
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


def auto_threshold(scores: np.ndarray, sigmas: float = 3.0) -> tuple[float, dict]:
    """Mean + `sigmas` standard deviations of held-out good scores.

    Measured against the maximum, 4 std and the 95th percentile (bench/accuracy.py): it
    ties the best on bottle_256 (1 of 83 wrong) and beats the maximum on screw_512, since one
    odd training image cannot drag it up the way it drags the maximum; the 95th percentile
    flags 4 of 83 on bottle_256. Returns the value and the statistics stored in the model.
    """
    mean, std, top = float(scores.mean()), float(scores.std()), float(scores.max())
    value = mean + sigmas * std
    alarms = int((scores >= value).sum())
    details = {
        "rule": f"mean + {sigmas:g} std of leave-one-image-out scores of train/good",
        "holdout": {
            "count": int(scores.size),
            "mean": mean,
            "std": std,
            "min": float(scores.min()),
            "max": top,
            "p95": float(np.percentile(scores, 95)),
        },
        "expected_false_alarms": {
            "held_out_flagged": alarms,
            "held_out": int(scores.size),
            "upper_95": false_alarm_bound(alarms, int(scores.size)),
        },
    }
    return value, details


def false_alarm_bound(flagged: int, count: int, confidence: float = 0.95) -> float:
    """Upper `confidence` bound on the rate of good images flagged, from `flagged` of
    `count` held-out good images (Clopper-Pearson). Held-out images are judged against a
    bank without their own patches, which scores them a little higher than new good images
    (bench/few_shot.py), so the bound errs towards more alarms, not fewer."""
    from scipy.stats import beta

    if flagged >= count:
        return 1.0
    return float(beta.ppf(confidence, flagged + 1, count - flagged))


def parse_threshold(text: str) -> float | str:
    """`auto`, or a finite positive number (argparse type)."""
    if text == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"threshold must be 'auto' or a number, not {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"threshold must be a finite positive number, not {text!r}")
    return value

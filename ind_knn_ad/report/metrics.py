"""Segmentation metrics beyond the pixel ROC AUC: the per-region overlap (PRO) curve and the
area under it up to a false-positive rate of 0.3 (AUPRO), as the MVTec AD benchmark's own
evaluation (Bergmann et al., IJCV 2021) and anomalib report them.

The pixel ROC AUC weighs every defective pixel alike, so one large defect found drowns
several small ones missed; PRO averages the overlap per connected defect region instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid

PRO_MAX_FPR = 0.3  # the benchmark's integration limit: beyond it a map is of no use
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=int)  # regions as the benchmark labels them


def pro_curve(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(false-positive rate, mean per-region overlap) at every threshold on the maps, from
    the highest down, starting at (0, 0); None without a defect region or a good pixel.

    The FPR is over the good pixels of all images; the overlap is, for each connected
    region of each (H, W) 0/1 mask, the share of its pixels at or above the threshold,
    averaged over all regions. One sort of all pixels gives every threshold at once: each
    good pixel adds 1/good to the FPR as the threshold passes it, each region pixel
    1/(its region's size x regions) to the overlap.
    """
    scores, good, weights = [], [], []
    regions = 0
    for amap, mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(mask > 0, structure=_EIGHT_NEIGHBOURS)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1).astype(np.float64)
        sizes[0] = np.inf  # good pixels add nothing to the overlap
        scores.append(np.asarray(amap, np.float64).ravel())
        good.append(labelled.ravel() == 0)
        weights.append(1.0 / sizes[labelled.ravel()])
        regions += count
    good_pixels = sum(int(g.sum()) for g in good)
    if regions == 0 or good_pixels == 0:
        return None
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    fpr = np.cumsum(np.concatenate(good)[order]) / good_pixels
    pro = np.cumsum(np.concatenate(weights)[order]) / regions
    ranked = score[order]
    last = np.append(ranked[1:] != ranked[:-1], True)  # the last pixel of each distinct score
    return np.append(0.0, np.clip(fpr[last], 0, 1)), np.append(0.0, np.clip(pro[last], 0, 1))


def aupro(fpr: np.ndarray, pro: np.ndarray, limit: float = PRO_MAX_FPR) -> float:
    """The area under the PRO curve from an FPR of 0 to `limit`, divided by `limit` (1.0 for
    a map that ranks every region pixel above every good one); the curve is cut at `limit`
    by linear interpolation between its two neighbouring points."""
    inside = int(np.searchsorted(fpr, limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < len(fpr) and x[-1] < limit:
        step = (limit - x[-1]) / (fpr[inside] - x[-1])
        x = np.append(x, limit)
        y = np.append(y, y[-1] + step * (pro[inside] - y[-1]))
    return float(trapezoid(y, x) / limit)


def sampled(x: np.ndarray, y: np.ndarray, upto: float, points: int = 61) -> list[list[float]]:
    """A curve as [x, y] pairs at `points` even steps of x from 0 to `upto`, for the results
    file and the report's plots: a few hundred numbers instead of one per pixel."""
    grid = np.linspace(0.0, upto, points)
    values = np.interp(grid, x, y)
    return [[round(float(a), 4), round(float(b), 4)] for a, b in zip(grid, values, strict=True)]

"""PRO / AUPRO (issue 24, item 4) against a reference written from the benchmark's
definition, one threshold at a time, on masks and maps these tests build themselves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.integrate import trapezoid

from ind_knn_ad.report.metrics import PRO_MAX_FPR, aupro, pro_curve


def _reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """For every distinct map value t: FPR = good pixels >= t over all good pixels, PRO = the
    mean over every 8-connected mask region of its share of pixels >= t; the curve up to
    FPR 0.3 (cut there by interpolation) integrated by the trapezoid rule, divided by 0.3."""
    regions, good = [], []
    for amap, mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == index] for index in range(1, count + 1)]
        good.append(amap[mask == 0])
    good_values = np.concatenate(good)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fpr = float((good_values >= t).mean())
        points.append((fpr, float(np.mean([(region >= t).mean() for region in regions]))))
    fprs, pros = np.array(points).T
    cut = np.interp(PRO_MAX_FPR, fprs, pros)
    keep = fprs <= PRO_MAX_FPR
    return float(trapezoid(np.append(pros[keep], cut), np.append(fprs[keep], PRO_MAX_FPR)) / 0.3)


def _masks_and_maps(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four 32x32 images: one good, three with one to three blobs of different sizes, and
    noisy maps that are higher on the blobs (rounded, so values tie)."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for blobs in range(4):
        mask = np.zeros((32, 32), np.uint8)
        for _ in range(blobs):
            y, x = rng.integers(2, 26, size=2)
            h, w = rng.integers(1, 7, size=2)
            mask[y : y + h, x : x + w] = 1
        masks.append(mask)
        maps.append(np.round(rng.normal(size=(32, 32)) + 1.5 * mask, 1))
    return maps, masks


@pytest.mark.parametrize("seed", range(5))
def test_aupro_equals_the_reference_computation(seed: int) -> None:
    maps, masks = _masks_and_maps(seed)
    curve = pro_curve(maps, masks)
    assert curve is not None
    assert aupro(*curve) == pytest.approx(_reference_aupro(maps, masks), abs=1e-9)


def test_a_perfect_map_scores_one_and_a_region_never_found_halves_it() -> None:
    """The area counts regions, not pixels: a 1-pixel region missed costs as much as a large
    one. A map that ranks every defect pixel first scores 1."""
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1  # 100 pixels
    mask[16, 16] = 1  # 1 pixel, apart
    perfect = mask.astype(float)
    assert aupro(*pro_curve([perfect], [mask])) == pytest.approx(1.0)
    blind = perfect.copy()
    blind[16, 16] = -1.0  # the small region lowest of all: found only at FPR 1
    assert aupro(*pro_curve([blind], [mask])) == pytest.approx(0.5)


def test_no_region_or_no_good_pixel_gives_no_curve() -> None:
    flat = np.zeros((8, 8))
    assert pro_curve([flat], [np.zeros((8, 8), np.uint8)]) is None
    assert pro_curve([flat], [np.ones((8, 8), np.uint8)]) is None

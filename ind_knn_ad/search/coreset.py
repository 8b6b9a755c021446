"""PatchCore's memory-bank subsampling: greedy k-center (search/k_center.py) in a seeded
random low-dimensional projection (Johnson-Lindenstrauss), which keeps the ordering of
distances while making each step cheap; the bank's size rule; the seeded image samples of
the fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ind_knn_ad.search.k_center import k_center_radius, start_index
from ind_knn_ad.search.two_stage import two_stage_k_center, worth_two_stages

PROJECTION_DIM = 128
# Plain greedy k-center's work grows as rows x bank size (bench/budget.py). Beyond this, it
# runs in two stages (search/two_stage.py), whose bank covers the rows less tightly but
# costs a fraction of the time; set above the largest of the shared sets' fits (their
# default and automatic settings, and grid_512 at 512 px with a 1% coreset:
# bench/same_fit.py), so that every one of them keeps its bank.
GREEDY_WORK = 4e9
# Rows projected per matrix product, so projecting needs no second full-size copy.
PROJECT_ROWS = 1 << 16


def project(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Seeded sparse random projection of (N, D) features to (N, dim) float32.

    Identity (as float32) when D <= dim. Projected in row chunks to bound memory.
    """
    features = np.asarray(features)
    if features.shape[1] <= dim:
        return np.ascontiguousarray(features, dtype=np.float32)
    from sklearn.random_projection import SparseRandomProjection

    projector = SparseRandomProjection(n_components=dim, random_state=seed)
    projector.fit(np.zeros((1, features.shape[1]), dtype=np.float32))
    matrix = np.ascontiguousarray(projector.components_.toarray().T, dtype=np.float32)
    points = np.empty((features.shape[0], dim), dtype=np.float32)
    for start in range(0, features.shape[0], PROJECT_ROWS):
        chunk = np.asarray(features[start : start + PROJECT_ROWS], dtype=np.float32)
        np.matmul(chunk, matrix, out=points[start : start + PROJECT_ROWS])
    return points


# Without a fraction asked for, a bank of up to this many patches is kept whole: searching it
# costs no more than searching the 10% bank of a 200-image set at 224 px (bench/one_off.py,
# bench/batch.py), and with few training images a coreset only drops the patches that keep
# the held-out threshold honest (bench/few_shot.py --coreset 1.0 against 0.1).
FULL_BANK_PATCHES = 16_384
DEFAULT_FRACTION = 0.1
# Without a fraction asked for, the bank stops growing at DEFAULT_FRACTION of this many
# training images' patches: every later scoring call searches it, so a fit on thousands of
# photos scores about as fast as one on hundreds (bench/stream_fit.py). Above the largest
# shared set (bottle_256, 209 images) and MVTec AD's largest category (hazelnut, 391).
BANK_IMAGES = 400


def coreset_size(count: int, fraction: float | None, image_rows: int | None = None) -> int:
    """Bank size for `fraction` of `count` patches, at least one, rounded up. With no
    fraction (the default): every patch up to FULL_BANK_PATCHES, else DEFAULT_FRACTION;
    given the rows of one training image (`image_rows`, views included), no more than
    DEFAULT_FRACTION of BANK_IMAGES images' rows (or FULL_BANK_PATCHES, if more)."""
    if fraction is None:
        if count <= FULL_BANK_PATCHES:
            return count
        size = coreset_size(count, DEFAULT_FRACTION)
        if image_rows is not None:
            most = coreset_size(BANK_IMAGES * image_rows, DEFAULT_FRACTION)
            size = min(size, max(FULL_BANK_PATCHES, most))
        return size
    return max(1, math.ceil(fraction * count))


def greedy_coreset(
    features: np.ndarray,
    size: int,
    projection_dim: int = PROJECTION_DIM,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    image_rows: int = 1,
    work: float = GREEDY_WORK,
) -> np.ndarray:
    """Indices of `size` rows of (N, D) `features` chosen by greedy k-center in a seeded
    random projection, starting from a seeded random row. Where rows x size exceeds `work`
    (and two stages save work), the two-stage greedy of search/two_stage.py instead, in
    chunks of whole images of `image_rows` rows."""
    count = features.shape[0]
    if not 0 < size <= count:
        raise ValueError(f"coreset size must be in 1..{count}, not {size}")
    if size == count:
        # Every row is kept (--coreset 1.0): the greedy order would change nothing the bank
        # is used for, and ordering all rows costs time quadratic in their number.
        return np.arange(count)
    if count * size > work and worth_two_stages(count, size):
        points = project(features, projection_dim, seed)
        return two_stage_k_center(points, size, seed, image_rows, progress)
    # Passed on without a name here, so k_center_radius holds the only reference.
    chosen, _ = k_center_radius(
        project(features, projection_dim, seed), size, start_index(count, seed), progress
    )
    return chosen


def seeded_sample(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most `limit` of `count` items: how every
    fit-side subsample of training images is drawn (held-out scores, the images searched
    for fillers, the pose statistic, the automatic settings' validation)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))

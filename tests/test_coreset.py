"""Greedy coreset selection against a plain textbook implementation on small data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ind_knn_ad.search.coreset import (
    BANK_IMAGES,
    FULL_BANK_PATCHES,
    coreset_size,
    greedy_coreset,
    project,
)
from ind_knn_ad.search.k_center import greedy_k_center, start_index


def reference_k_center(points: np.ndarray, size: int, start: int) -> np.ndarray:
    """Textbook greedy k-center, exact distances in float64: each step takes the first point
    farthest from everything chosen; chosen points are never taken again."""
    points = points.astype(np.float64)
    nearest = np.full(len(points), np.inf)
    chosen = [start]
    for _ in range(size - 1):
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(axis=1))
        nearest[chosen] = -np.inf
        chosen.append(int(nearest.argmax()))
    return np.array(chosen)


def covering_radius(points: np.ndarray, chosen: np.ndarray) -> float:
    """Largest distance from any point to its nearest chosen point."""
    points = points.astype(np.float64)
    centres = points[chosen]
    squared = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)
    return float(np.sqrt(squared.min(axis=1).max()))


def clustered(count: int, dim: int, seed: int, clusters: int = 24) -> np.ndarray:
    """Gaussian blobs of different spreads: the kind of data where block pruning skips most
    of the work, so the test goes through the pruned path many times."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(clusters, dim))
    which = rng.integers(len(centres), size=count)
    spread = rng.uniform(0.3, 3.0, size=len(centres))[which, None]
    return (centres[which] + spread * rng.normal(size=(count, dim))).astype(np.float32)


@pytest.mark.parametrize(
    ("count", "dim", "size", "seed"),
    [(3000, 16, 600, 0), (2000, 5, 400, 1), (500, 64, 50, 2), (40, 3, 1, 3)],
)
def test_same_choices_as_the_reference(count: int, dim: int, size: int, seed: int) -> None:
    # Sizes stay well below the count: near the end of a full ordering the remaining
    # distances are as small as float32 rounding, and any two exact methods may differ.
    points = clustered(count, dim, seed)
    start = start_index(count, seed)
    fast = greedy_k_center(points, size, start)
    np.testing.assert_array_equal(fast, reference_k_center(points, size, start))


def test_ties_go_to_the_lowest_index() -> None:
    """Integer grid points: many distances are exactly equal, in float32 as in float64."""
    xs, ys = np.meshgrid(np.arange(30), np.arange(30))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    fast = greedy_k_center(points, 300, 17)
    np.testing.assert_array_equal(fast, reference_k_center(points, 300, 17))


def test_points_are_distinct_even_with_duplicates() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(150, 8)).astype(np.float32)
    points = np.concatenate([base, base[:50]])  # 50 exact duplicates
    # Every index once, even when all that is left are copies of chosen points.
    chosen = greedy_k_center(points, len(points), 0)
    assert sorted(chosen.tolist()) == list(range(len(points)))
    # No copy is taken while a distinct point is still uncovered.
    first = greedy_k_center(points, 150, 0)
    assert len(np.unique(points[first], axis=0)) == 150


def test_coverage_radius_shrinks_as_the_fraction_grows() -> None:
    features = clustered(2000, 160, 5)  # above the projection size: the projection is used
    radii = []
    for fraction in (0.01, 0.03, 0.1, 0.3):
        chosen = greedy_coreset(features, coreset_size(len(features), fraction))
        radii.append(covering_radius(features, chosen))
    assert all(later < earlier for earlier, later in itertools.pairwise(radii))
    # Better covered than by as many random points.
    size = coreset_size(len(features), 0.1)
    random = np.random.default_rng(0).choice(len(features), size, replace=False)
    assert radii[2] < covering_radius(features, random)


def test_coreset_is_k_center_on_the_seeded_projection() -> None:
    features = clustered(1500, 200, 6)
    points = project(features, 32, seed=3)
    assert points.shape == (1500, 32) and points.dtype == np.float32
    chosen = greedy_coreset(features, 200, projection_dim=32, seed=3)
    np.testing.assert_array_equal(chosen, reference_k_center(points, 200, start_index(1500, 3)))


def test_bad_sizes_are_refused() -> None:
    points = np.zeros((10, 4), dtype=np.float32)
    for size in (0, 11):
        with pytest.raises(ValueError, match="coreset size"):
            greedy_coreset(points, size)


def test_the_full_fraction_keeps_every_row_without_ordering_them() -> None:
    points = clustered(500, 16, 0)
    assert coreset_size(len(points), 1.0) == len(points)
    np.testing.assert_array_equal(greedy_coreset(points, len(points)), np.arange(len(points)))


def test_without_a_fraction_small_banks_stay_whole_and_large_ones_keep_a_tenth() -> None:
    assert coreset_size(5 * 784, None) == 5 * 784  # five images at 224 px
    assert coreset_size(FULL_BANK_PATCHES, None) == FULL_BANK_PATCHES
    assert coreset_size(209 * 784, None) == coreset_size(209 * 784, 0.1) == 16_386
    # An explicit fraction always wins, also on a small bank.
    assert coreset_size(5 * 784, 0.1) == 392


def test_without_a_fraction_the_bank_stops_growing_past_bank_images() -> None:
    """Every scoring call searches the bank: a fit on thousands of photos keeps a bank of
    BANK_IMAGES images' tenth, while an explicit fraction still keeps its share."""
    at_cap = coreset_size(BANK_IMAGES * 784, None, 784)
    assert at_cap == coreset_size(BANK_IMAGES * 784, 0.1)
    assert coreset_size(10_000 * 784, None, 784) == at_cap
    assert coreset_size(209 * 784, None, 784) == 16_386  # the shared sets keep their banks
    assert coreset_size(10_000 * 784, 0.1, 784) == 784_000
    # Small images: never below the whole-bank rule.
    assert coreset_size(100_000 * 10, None, 10) == FULL_BANK_PATCHES

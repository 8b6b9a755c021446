"""The two-stage greedy coreset (search/two_stage.py): used only beyond the work budget,
deterministic, and covering the rows nearly as tightly as plain greedy on inputs made to
hurt chunking. Dimensions stay within the projection's, so the points are the features."""

from __future__ import annotations

import numpy as np
import pytest
from test_coreset import clustered, covering_radius, reference_k_center

from ind_knn_ad.search.coreset import GREEDY_WORK, coreset_size, greedy_coreset
from ind_knn_ad.search.k_center import start_index
from ind_knn_ad.search.two_stage import chunk_bounds, two_stage_k_center

IMAGE_ROWS = 20  # patches per "image" in these tests
# The radius bound the module docstring derives is 6 times plain greedy's; on every input
# here the two-stage radius stays within this factor.
FACTOR = 2.0


def plain(points: np.ndarray, size: int) -> np.ndarray:
    return greedy_coreset(points, size)


def two_stage(points: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """greedy_coreset with a budget below this input's work: two stages."""
    return greedy_coreset(points, size, seed=seed, image_rows=IMAGE_ROWS, work=0)


def test_the_shared_sets_fits_stay_within_the_budget() -> None:
    """Their banks stay plain greedy's (bench/same_fit.py): bottle_256's default bank, and
    grid_512 and screw_512 at 512 px with a 1% coreset, the largest."""
    for images, patches, fraction in ((209, 28 * 28, None), (132, 64 * 64, 0.01)):
        rows = images * patches
        assert rows * coreset_size(rows, fraction) <= GREEDY_WORK / 1.3


def test_within_the_budget_the_choice_is_plain_greedy() -> None:
    points = clustered(20_000, 16, 0, clusters=6)
    size = 200
    expected = reference_k_center(points, size, start_index(len(points), 0))
    at_budget = greedy_coreset(points, size, image_rows=IMAGE_ROWS, work=len(points) * size)
    np.testing.assert_array_equal(at_budget, expected)
    np.testing.assert_array_equal(plain(points, size), expected)
    assert not np.array_equal(two_stage(points, size), expected)


def test_large_fractions_stay_plain_even_beyond_the_budget() -> None:
    """A union of a few times the bank would be most of the rows: nothing to save."""
    points = clustered(2000, 8, 1)
    size = coreset_size(len(points), 0.1)
    np.testing.assert_array_equal(
        greedy_coreset(points, size, work=0), greedy_coreset(points, size)
    )


def test_chunks_are_whole_images_covering_every_row_once() -> None:
    bounds = chunk_bounds(4000, 40, IMAGE_ROWS)
    assert bounds[0] == 0 and bounds[-1] == 4000
    assert (np.diff(bounds) > 0).all() and (bounds % IMAGE_ROWS == 0).all()
    assert len(bounds) - 1 == 100  # about rows / bank size
    # Fewer images than chunks: single rows instead.
    assert len(chunk_bounds(4000, 40, 1000)) - 1 == 100
    assert len(chunk_bounds(100, 90, 10)) - 1 == 2


def test_distinct_deterministic_and_seeded() -> None:
    points = clustered(20_000, 16, 2, clusters=6)
    chosen = two_stage(points, 200)
    assert len(chosen) == 200 == len(np.unique(chosen))
    assert chosen.min() >= 0 and chosen.max() < len(points)
    np.testing.assert_array_equal(chosen, two_stage(points, 200))
    assert not np.array_equal(chosen, two_stage(points, 200, seed=1))


def _inputs() -> dict[str, np.ndarray]:
    """Inputs of 20,000 rows (1,000 "images" of 20) that could hurt a chunked choice, for
    a 1% bank: 100 chunks of 10 images, 8 picks each."""
    rng = np.random.default_rng(7)
    inputs = {
        "gaussian": rng.normal(size=(20_000, 32)),
        "clusters": clustered(20_000, 16, 3, clusters=6),
        # Every image the same 20 points: each chunk sees all of them.
        "duplicates": np.tile(rng.normal(size=(IMAGE_ROWS, 8)), (1000, 1)),
    }
    outlier = clustered(20_000, 16, 4, clusters=6)
    outlier[12345] = 1e3  # one row far from everything: any bank must hold it
    inputs["outlier"] = outlier
    rare = clustered(20_000, 16, 5, clusters=6)
    rare[1234] = rare[1234] + 60.0  # a patch unlike any other, in one image only
    inputs["rare"] = rare
    # One image spread far and wide, the rest tight: its chunk needs many more picks
    # than its share, as plain greedy gives it.
    diverse = 0.1 * rng.normal(size=(20_000, 16))
    diverse[:IMAGE_ROWS] = 30 * rng.normal(size=(IMAGE_ROWS, 16))
    inputs["diverse"] = diverse
    return {name: points.astype(np.float32) for name, points in inputs.items()}


@pytest.mark.parametrize("name", list(_inputs()))
def test_covers_within_a_small_factor_of_plain_greedy(name: str) -> None:
    points, size = _inputs()[name], 200
    chosen = two_stage(points, size)
    ours, theirs = covering_radius(points, chosen), covering_radius(points, plain(points, size))
    assert ours <= FACTOR * theirs + 1e-6, (ours, theirs)
    if name == "duplicates":  # too few distinct rows to chunk: plain greedy after all
        np.testing.assert_array_equal(chosen, plain(points, size))
    if name == "outlier":
        assert 12345 in chosen
    if name == "rare":
        assert 1234 in chosen


def test_progress_rises_to_the_bank_size() -> None:
    points = _inputs()["diverse"]  # with more picks for one chunk: the bar never goes back
    seen: list[int] = []
    two_stage_k_center(points, 200, 0, IMAGE_ROWS, seen.append)
    assert seen == sorted(seen) and seen[-1] == 200 and all(0 < done <= 200 for done in seen)
    assert seen.count(200) == 1

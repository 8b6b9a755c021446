"""Nearest-neighbour scores and image scores against plain brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest

from ind_knn_ad.methods.patchcore.image_score import IMAGE_SCORES, score_features
from ind_knn_ad.report.heatmap import anomaly_map
from ind_knn_ad.search import nearest as scoring
from ind_knn_ad.search.nearest import nearest_neighbours


def brute_force(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.sqrt(((queries[:, None, :] - bank[None, :, :]) ** 2).sum(-1))
    return distances.min(axis=1), distances.argmin(axis=1)


def test_nearest_neighbours_equal_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(130, 24)).astype(np.float32)
    # Small blocks force the chunked path through several iterations.
    monkeypatch.setattr(scoring, "BLOCK_ELEMENTS", 300 * 7)
    distances, indices = nearest_neighbours(queries, bank)
    expected_d, expected_i = brute_force(queries.astype(np.float64), bank.astype(np.float64))
    np.testing.assert_allclose(distances, expected_d, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(indices, expected_i)


def test_query_in_bank_scores_zero() -> None:
    bank = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    distances, indices = nearest_neighbours(bank[[3, 17]], bank)
    np.testing.assert_allclose(distances, 0.0, atol=1e-3)
    np.testing.assert_array_equal(indices, [3, 17])


def test_image_score_is_the_worst_patch() -> None:
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(200, 16)).astype(np.float32)
    features = rng.normal(size=(3, 16, 4, 5)).astype(np.float32)
    features[1, :, 2, 3] += 25.0  # one far-out patch in image 1
    results = score_features(features, bank, "max")
    flat = features.transpose(0, 2, 3, 1).reshape(3, 20, 16)
    for image, result in enumerate(results):
        expected, _ = brute_force(flat[image].astype(np.float64), bank.astype(np.float64))
        assert result.patch_map.shape == (4, 5)
        np.testing.assert_allclose(result.patch_map.ravel(), expected, rtol=1e-4)
        assert result.score == pytest.approx(expected.max(), rel=1e-4)
    assert np.unravel_index(results[1].patch_map.argmax(), (4, 5)) == (2, 3)
    assert results[1].score > 3 * max(results[0].score, results[2].score)


def test_top10_is_the_mean_of_the_ten_worst_patches() -> None:
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(200, 16)).astype(np.float32)
    features = rng.normal(size=(2, 16, 6, 6)).astype(np.float32)
    features[1, :, :2, :] += 3.0  # twelve unusual patches in image 1
    flat = features.transpose(0, 2, 3, 1).reshape(2, 36, 16).astype(np.float64)
    for maps in (True, False):
        results = score_features(features, bank, "top10", maps=maps)
        for image, result in enumerate(results):
            expected, _ = brute_force(flat[image], bank.astype(np.float64))
            assert result.score == pytest.approx(np.sort(expected)[-10:].mean(), rel=1e-4)
    single_patch = score_features(features[:, :, :1, :1], bank, "top10")
    assert single_patch[0].score == pytest.approx(single_patch[0].patch_map.max())


def test_reweighted_score_damps_but_keeps_order() -> None:
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(200, 16)).astype(np.float32)
    features = rng.normal(size=(2, 16, 3, 3)).astype(np.float32)
    features[1] += 4.0
    plain = [r.score for r in score_features(features, bank, "max")]
    weighted = [r.score for r in score_features(features, bank, "reweighted")]
    for p, w in zip(plain, weighted, strict=True):
        assert 0 < w < p  # eq. 7's weight lies in (0, 1)
    assert weighted[1] > weighted[0]


def test_anomaly_map_is_upsampled_and_blurred() -> None:
    grid = np.zeros((4, 8), dtype=np.float32)  # an aligned model's grid is wider than high
    grid[1, 5] = 10.0
    result = anomaly_map(grid, (64, 32))
    assert result.shape == (32, 64)
    y, x = np.unravel_index(result.argmax(), result.shape)
    assert abs(y - 12) <= 4 and abs(x - 44) <= 4  # patch (1, 5) covers pixels 8-16, 40-48
    assert result.max() < 10.0  # the Gaussian spreads the peak


@pytest.mark.parametrize("image_score", IMAGE_SCORES)
def test_regions_decide_which_patches_count(image_score: str) -> None:
    """An aligned part is scored on its region alone: a far-out patch outside it changes
    nothing, inside it decides the score; both searches give the same bits."""
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(400, 16)).astype(np.float32)
    features = rng.normal(size=(3, 16, 8, 10)).astype(np.float32)
    features[:, :, 0, 0] += 30.0  # far out, in the corner of every image
    regions = np.zeros((3, 8, 10), dtype=bool)
    regions[:, 2:6, 3:8] = True  # the part
    regions[2, 0, 0] = True  # image 2's corner patch counts
    regions[1, :, :] = False
    regions[1, 4, 4] = True  # a part of one patch: fewer than ten count
    flat = features.transpose(0, 2, 3, 1).reshape(3, 80, 16).astype(np.float64)
    with_maps = score_features(features, bank, image_score, regions=regions)
    without = score_features(features, bank, image_score, maps=False, regions=regions)
    assert [r.score for r in with_maps] == [r.score for r in without]
    for image, result in enumerate(with_maps):
        expected, _ = brute_force(flat[image], bank.astype(np.float64))
        inside = expected[regions[image].ravel()]
        np.testing.assert_allclose(result.patch_map[regions[image]], inside, rtol=1e-4)
        assert (result.patch_map[~regions[image]] == 0).all()
        if image_score == "top10":
            assert result.score == pytest.approx(np.sort(inside)[-10:].mean(), rel=1e-4)
        elif image_score == "max":
            assert result.score == pytest.approx(inside.max(), rel=1e-4)
    unmasked = score_features(features, bank, image_score)
    assert with_maps[0].score < unmasked[0].score / 2  # the corner no longer decides
    assert with_maps[2].score > 2 * with_maps[0].score  # inside the region it does

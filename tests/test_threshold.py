"""The automatic threshold: its held-out scores against a brute-force leave-one-image-out,
with the held-out image's rows replaced by the nearest patches of other images, and its
rules (mean + 3 std; with few training images, the cut against synthetic defects)."""

from __future__ import annotations

import numpy as np
import pytest

from ind_knn_ad.calibration.threshold import FEW, auto_threshold, balanced_cut, holdout_scores


def _features(images: int = 12, grid: tuple[int, int] = (3, 4), channels: int = 6, views: int = 1):
    """Training features with `views` blocks of patches per image (`augment`), a bank of
    40 of their rows and each row's image."""
    rng = np.random.default_rng(0)
    shape = (images, views * grid[0] * grid[1], channels)
    features = rng.normal(size=shape).astype(np.float32)
    rows = rng.choice(features.shape[0] * features.shape[1], 40, replace=False)
    bank = features.reshape(-1, channels)[rows]
    return features, grid, bank, rows // features.shape[1]


def _distances(points: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None].astype(np.float64) - rows[None]) ** 2).sum(-1))


def _filler(features: np.ndarray, row: np.ndarray, source: int) -> np.ndarray:
    """The nearest patch of an image other than `source`, by exhaustive search."""
    others = np.concatenate([f for image, f in enumerate(features) if image != source])
    return others[np.argmin(_distances(row[None], others)[0])]


@pytest.mark.parametrize("views", [1, 3])
def test_each_image_is_scored_without_its_own_patches_and_their_holes_filled(views: int) -> None:
    """With views, the image alone is scored (its first h*w patches), without the rows of
    any of its views, and other images' views may fill its holes."""
    features, grid, bank, sources = _features(views=views)
    scores = holdout_scores(features, grid, bank, sources, "max")
    for image, score in enumerate(scores):
        own = sources == image
        fillers = [_filler(features, row, image) for row in bank[own]]
        rows = np.concatenate([bank[~own], np.reshape(fillers, (-1, bank.shape[1]))])
        patches = features[image, : grid[0] * grid[1]]
        assert np.isclose(score, _distances(patches, rows).min(axis=1).max(), rtol=1e-5)
        # A filler is a patch of another image: the image's own patches are never used.
        assert not np.isclose(score, 0.0)


def test_a_whole_bank_has_no_holes_to_fill() -> None:
    """With every patch in the bank the fillers are rows it holds already: held-out scores
    are plain leave-one-image-out."""
    features, grid, _, _ = _features()
    bank = features.reshape(-1, features.shape[2])
    sources = np.repeat(np.arange(len(features)), features.shape[1])
    scores = holdout_scores(features, grid, bank, sources, "max")
    for image, score in enumerate(scores):
        others = bank[sources != image]
        assert np.isclose(score, _distances(features[image], others).min(axis=1).max(), rtol=1e-5)


def test_large_training_sets_score_a_seeded_sample() -> None:
    """Above the limit only `limit` images are scored, the same ones for the same seed,
    each exactly as the full run scores it."""
    features, grid, bank, sources = _features()
    full = holdout_scores(features, grid, bank, sources, "max")
    sample = holdout_scores(features, grid, bank, sources, "max", limit=5, seed=3)
    again = holdout_scores(features, grid, bank, sources, "max", limit=5, seed=3)
    assert len(sample) == 5 and np.array_equal(sample, again)
    assert set(sample.tolist()) <= set(full.tolist())


def test_auto_threshold_is_mean_plus_three_std() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    value, details = auto_threshold(scores)
    assert value == scores.mean() + 3 * scores.std()
    assert details["holdout"]["count"] == 4 and details["holdout"]["max"] == 4.0


def test_few_held_out_images_place_the_threshold_against_synthetic_defects() -> None:
    """5 held-out good scores and defects from 6 up: mean + 3 std (7.0) would pass the
    defects at 6 and 6.5; the cut between the two kinds flags every defect and no good."""
    good, defects = np.array([2.0, 3.0, 3.0, 4.0, 5.0]), np.array([6.0, 6.5, 9.0, 12.0])
    value, details = auto_threshold(good, defects)
    assert value == 5.5
    assert "synthetic defects" in details["rule"]
    assert details["synthetic"] == {"count": 4, "caught": 4}
    assert details["holdout"]["count"] == 5
    assert details["expected_false_alarms"]["held_out_flagged"] == 0


def test_a_synthetic_defect_scoring_infinite_leaves_a_finite_threshold() -> None:
    good, defects = np.array([2.0, 3.0, 4.0]), np.array([6.0, np.inf, np.nan])
    value, details = auto_threshold(good, defects)
    assert value == 5.0 and details["synthetic"] == {"count": 1, "caught": 1}


def test_from_few_held_out_images_on_the_rule_is_mean_plus_three_std() -> None:
    good = np.linspace(2.0, 5.0, FEW)
    value, details = auto_threshold(good, np.array([6.0, 9.0]))
    assert value == pytest.approx(good.mean() + 3 * good.std())
    assert "synthetic" not in details and details["rule"].startswith("mean + 3 std")
    value, details = auto_threshold(good[:5], np.array([]))  # no defects: nothing to place
    assert details["rule"].startswith("mean + 3 std")


@pytest.mark.parametrize("seed", range(30))
def test_balanced_cut_has_the_least_false_alarm_plus_miss_share(seed: int) -> None:
    """Against every threshold at or between the scores, on random scores with ties."""
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 12, rng.integers(1, 15)).astype(float)
    defects = rng.integers(4, 16, rng.integers(1, 40)).astype(float)

    def cost(value: float) -> float:
        return (good >= value).mean() + (defects < value).mean()

    scores = np.unique(np.concatenate([good, defects]))
    candidates = np.concatenate([[0.0], scores, [scores[-1] + 1]])
    value = balanced_cut(good, defects)
    assert cost(value) == pytest.approx(min(cost(c) for c in candidates))
    assert not np.isin(value, scores)  # between scores, never on one


def test_a_bank_from_one_image_is_filled_for_that_image() -> None:
    """Every row from image 0: held out, it is scored against other images' patches."""
    features = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    bank, sources = features[0], np.zeros(4, dtype=np.int64)
    score = holdout_scores(features, (2, 2), bank, sources, "max")[0]
    fillers = np.stack([_filler(features, row, 0) for row in bank])
    assert np.isclose(score, _distances(features[0], fillers).min(axis=1).max(), rtol=1e-5)


def test_expected_false_alarms_count_held_out_images_at_or_above_the_threshold() -> None:
    scores = np.concatenate([np.zeros(99), [100.0]])  # one outlier: above mean + 3 std
    value, details = auto_threshold(scores)
    expected = details["expected_false_alarms"]
    assert value < 100.0
    assert (expected["held_out_flagged"], expected["held_out"]) == (1, 100)
    # Clopper-Pearson, 1 of 100: 4.66% (tables); 0 of 100: 1 - 0.05 ** (1 / 100) = 2.95%.
    assert expected["upper_95"] == pytest.approx(0.0466, abs=1e-4)
    value, details = auto_threshold(np.arange(100.0))
    assert details["expected_false_alarms"]["held_out_flagged"] == 0
    assert details["expected_false_alarms"]["upper_95"] == pytest.approx(1 - 0.05**0.01)

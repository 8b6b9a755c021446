"""The automatic threshold's rules: mean + 3 std of held-out scores; with few training
images, the cut against synthetic defects."""

from __future__ import annotations

import numpy as np
import pytest

from ind_knn_ad.calibration.threshold import FEW, auto_threshold


def test_auto_threshold_is_mean_plus_three_std() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    value, details = auto_threshold(scores)
    assert value == scores.mean() + 3 * scores.std()
    assert details["holdout"]["count"] == 4 and details["holdout"]["max"] == 4.0


def test_few_held_out_images_place_the_threshold_against_synthetic_defects() -> None:
    """5 held-out good scores and defects from 6 up: mean + 3 std (7.0) would pass the
    defects at 6 and 6.5; the defects' lower quartile (6.375) passes only the faintest."""
    good, defects = np.array([2.0, 3.0, 3.0, 4.0, 5.0]), np.array([6.0, 6.5, 9.0, 12.0])
    value, details = auto_threshold(good, defects)
    assert value == 6.375
    assert "synthetic defects" in details["rule"]
    assert details["synthetic"] == {"count": 4, "caught": 3}
    assert details["holdout"]["count"] == 5
    assert details["expected_false_alarms"]["held_out_flagged"] == 0


def test_a_synthetic_defect_scoring_infinite_leaves_a_finite_threshold() -> None:
    good, defects = np.array([2.0, 3.0, 4.0]), np.array([6.0, np.inf, np.nan])
    value, details = auto_threshold(good, defects)
    assert value == 6.0 and details["synthetic"] == {"count": 1, "caught": 1}


def test_from_few_held_out_images_on_the_rule_is_mean_plus_three_std() -> None:
    good = np.linspace(2.0, 5.0, FEW)
    value, details = auto_threshold(good, np.array([6.0, 9.0]))
    assert value == pytest.approx(good.mean() + 3 * good.std())
    assert "synthetic" not in details and details["rule"].startswith("mean + 3 std")
    value, details = auto_threshold(good[:5], np.array([]))  # no defects: nothing to place
    assert details["rule"].startswith("mean + 3 std")


@pytest.mark.parametrize("seed", range(30))
def test_few_held_out_images_cut_at_the_defects_the_model_sees(seed: int) -> None:
    """Below FEW: the lower quartile of the defects, wherever the held-out scores lie, so a
    new good image may score above every held-out one and still pass, and the faint
    defects (the lowest quarter) do not drag the cut into the good scores; held-out images
    at or above it count as expected false alarms."""
    rng = np.random.default_rng(seed)
    good = rng.uniform(10, rng.uniform(20, 40), rng.integers(2, FEW))
    defects = np.concatenate([rng.uniform(5, 20, 8), rng.uniform(25, 60, 32)])
    value, details = auto_threshold(good, defects)
    assert value == pytest.approx(np.percentile(defects, 25))
    assert details["synthetic"]["caught"] == int((defects >= value).sum()) >= 30
    flagged = int((good >= value).sum())
    assert details["expected_false_alarms"]["held_out_flagged"] == flagged
    assert details["rule"].startswith("the lower quartile of 40 synthetic defects")


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

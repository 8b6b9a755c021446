"""Thresholds from labelled images: each rule meets its target, and no other threshold
meets it better (checked against every threshold between the scores)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ind_knn_ad.calibration.operating_point import (
    OperatingPoint,
    operating_threshold,
    parse_operating_point,
)
from ind_knn_ad.cli import exit_codes
from ind_knn_ad.errors import ConfigError


def errors(good: np.ndarray, defective: np.ndarray, value: float) -> tuple[int, int]:
    return int((good >= value).sum()), int((defective < value).sum())


def test_separable_scores_get_a_threshold_halfway_between() -> None:
    value, details = operating_threshold(
        np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0]), OperatingPoint("f1"), "test/"
    )
    assert value == 4.0
    assert details["labelled"] == {
        "source": "test/",
        "good": 3,
        "defective": 2,
        "false_alarms": 0,
        "misses": 0,
    }
    assert details["operating_point"] == "f1"


@pytest.mark.parametrize(
    ("point", "expected", "false_alarms", "misses"),
    [("f1", 2.5, 1, 0), ("recall=1", 2.5, 1, 0), ("fpr=0", 6.5, 0, 2), ("fpr=0.34", 2.5, 1, 0)],
)
def test_overlapping_scores(point: str, expected: float, false_alarms: int, misses: int) -> None:
    good, defective = np.array([1.0, 2.0, 6.0]), np.array([3.0, 5.0, 7.0])
    value, details = operating_threshold(good, defective, parse_operating_point(point), "x")
    assert value == expected
    assert errors(good, defective, value) == (false_alarms, misses)
    assert (details["labelled"]["false_alarms"], details["labelled"]["misses"]) == (
        false_alarms,
        misses,
    )


def every_threshold(good: np.ndarray, defective: np.ndarray) -> np.ndarray:
    scores = np.unique(np.concatenate([good, defective]))
    return np.concatenate([[0.0], scores, [scores[-1] + 1]])


@pytest.mark.parametrize("seed", range(40))
def test_each_rule_is_optimal_on_random_scores_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 12, rng.integers(1, 15)).astype(float)
    defective = rng.integers(4, 16, rng.integers(1, 15)).astype(float)
    candidates = every_threshold(good, defective)
    outcomes = [errors(good, defective, value) for value in candidates]

    value, _ = operating_threshold(good, defective, OperatingPoint("f1"), "x")
    fa, miss = errors(good, defective, value)
    caught = defective.size - miss

    def f1(fa: int, miss: int) -> float:
        return 2 * (defective.size - miss) / (2 * (defective.size - miss) + fa + miss)

    assert f1(fa, miss) == max(f1(*outcome) for outcome in outcomes)

    recall = float(rng.choice([0.5, 0.9, 1.0]))
    value, _ = operating_threshold(good, defective, OperatingPoint("recall", recall), "x")
    fa, miss = errors(good, defective, value)
    caught = defective.size - miss
    assert caught >= recall * defective.size - 1e-9
    # No threshold with fewer false alarms keeps the recall.
    assert all(f >= fa for f, m in outcomes if defective.size - m >= recall * defective.size - 1e-9)
    # The threshold sits strictly between scores: no labelled score equals it.
    assert value not in set(good) | set(defective)

    rate = float(rng.choice([0.0, 0.1, 0.5]))
    value, _ = operating_threshold(good, defective, OperatingPoint("fpr", rate), "x")
    fa, miss = errors(good, defective, value)
    assert fa <= rate * good.size + 1e-9
    assert all(m >= miss for f, m in outcomes if f <= rate * good.size + 1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recall=0", "recall must be a number in (0, 1]"),
        ("recall=1.5", "recall must be a number in (0, 1]"),
        ("fpr=1", "fpr must be a number in [0, 1)"),
        ("fpr=nan", "fpr must be a number in [0, 1)"),
        ("recall=abc", "recall must be a number"),
        ("f1=2", "operating point must be f1, recall=R or fpr=F, not 'f1=2'"),
        ("best", "operating point must be f1, recall=R or fpr=F, not 'best'"),
        ("recall", "operating point must be"),
    ],
)
def test_bad_operating_points_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_operating_point(text)


def test_labels_of_one_kind_only_are_refused() -> None:
    """A setting the labels cannot support: the library names the setting, the command
    words it as the option."""
    with pytest.raises(ConfigError, match="needs good and defective labelled images") as raised:
        operating_threshold(np.ones(3), np.array([]), OperatingPoint("f1"), "test/")
    assert exit_codes.message(raised.value) == (
        "--operating-point needs good and defective labelled images; test/ has 3 good and "
        "0 defective"
    )

#!/usr/bin/env python3
"""Threshold rules tried on the scores of real fits, without fitting again.

Reads what `bench/flags.py --json` kept of each fit (the held-out good scores and synthetic
defect scores the automatic threshold was placed on, and the test images' scores) and
places the threshold by each rule below. Per rule and group of fits (all training images;
each k of the few-shot draws): the test images misclassified, the regret (errors minus the
fewest at any threshold), and the fits where good test images were flagged more often than
the bound the fit would print (its 95% bound from the held-out images it flags).

    python bench/flags.py --json all.json
    python bench/flags.py --shots 5 7 10 20 --draws 3 --json few.json
    python bench/threshold_rules.py all.json few.json
    python bench/threshold_rules.py few.json --by-set "until 2026-12-07" library
    python bench/threshold_rules.py few.json --bound library
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import fewest_errors
from scipy.stats import binom

from ind_knn_ad.calibration.threshold import (
    auto_threshold,
    cut_counts,
    false_alarm_bound,
    seen_cut,
)

Rule = Callable[[np.ndarray, np.ndarray], float]


def library(held: np.ndarray, synthetic: np.ndarray) -> float:
    """This checkout's `calibration.threshold.auto_threshold`."""
    return auto_threshold(held, synthetic)[0]


def balanced_cut(good: np.ndarray, defective: np.ndarray, alarm_weight: float = 1.0) -> float:
    """The middle one of the cuts with the least alarm_weight x false-alarm share plus miss
    share."""
    cuts, false_alarms, caught = cut_counts(good, defective)
    cost = alarm_weight * false_alarms / good.size + (defective.size - caught) / defective.size
    best = np.flatnonzero(cost <= cost.min() + 1e-12)
    return float(cuts[best[len(best) // 2]])


def until_2026_12_07(held: np.ndarray, synthetic: np.ndarray) -> float:
    """The library's rule before: `balanced` below 20 held-out images, else mean + 3 std."""
    finite = synthetic[np.isfinite(synthetic)]
    if finite.size and held.size < 20:
        return balanced_cut(held, finite)
    return float(held.mean() + 3 * held.std())


def toward(quantile: float, weight: float) -> Rule:
    """From the held-out maximum, `weight` of the way to this quantile (%) of the synthetic
    defects (0.5: halfway, the library's rule before the quartile itself)."""

    def rule(held: np.ndarray, synthetic: np.ndarray) -> float:
        seen = seen_cut(synthetic[np.isfinite(synthetic)], quantile)
        return float(held.max() + weight * (seen - held.max()))

    return rule


def sigmas(k: float) -> Rule:
    return lambda held, synthetic: float(held.mean() + k * held.std())


def highest(held: np.ndarray, synthetic: np.ndarray) -> float:
    return float(held.max())


def balanced(held: np.ndarray, synthetic: np.ndarray) -> float:
    return balanced_cut(held, synthetic[np.isfinite(synthetic)])


def weighted(alarm_weight: float) -> Rule:
    """`balanced`, a false alarm weighing alarm_weight times a miss."""
    return lambda held, synthetic: balanced_cut(
        held, synthetic[np.isfinite(synthetic)], alarm_weight
    )


def at_least(first: Rule, second: Rule) -> Rule:
    return lambda held, synthetic: max(first(held, synthetic), second(held, synthetic))


def spread_above_max(k: float) -> Rule:
    """The held-out maximum plus k times the held-out scores' spread."""
    return lambda held, synthetic: float(held.max() + k * held.std())


def below(count: int, few: Rule, many: Rule) -> Rule:
    return lambda held, synthetic: (few if held.size < count else many)(held, synthetic)


RULES: dict[str, Rule] = {
    "library": library,  # this checkout's
    "until 2026-12-07": until_2026_12_07,  # balanced below 20, else mean + 3 std
    "gap q25 always": toward(25, 0.5),
    "gap q33 always": toward(33, 0.5),
    "gap q25 below 20, else mean+3std": below(20, toward(25, 0.5), sigmas(3)),
    "halfway to q25 below 50 (the library's before q25)": below(50, toward(25, 0.5), sigmas(3)),
    "q25 x0.65 below 50": below(50, toward(25, 0.65), sigmas(3)),
    "q25 x0.75 below 50": below(50, toward(25, 0.75), sigmas(3)),
    "q25 below 50": below(50, toward(25, 1.0), sigmas(3)),
    "q20 below 50": below(50, toward(20, 1.0), sigmas(3)),
    "q30 below 50": below(50, toward(30, 1.0), sigmas(3)),
    "max(q25, held-out max) below 50": below(50, at_least(toward(25, 1.0), highest), sigmas(3)),
    "mean+3std": sigmas(3),
    "mean+2std": sigmas(2),
    "held-out max": highest,
    "balanced": balanced,
    "weighted x3": weighted(3),
    "max(balanced, mean+3std)": at_least(balanced, sigmas(3)),
    "max + 1 std": spread_above_max(1),
    "max + 0.5 std": spread_above_max(0.5),
}


def placed(fit: dict, rule: Rule) -> tuple[float, float]:
    """The threshold `rule` places from the fit's held-out and synthetic scores, and the
    false-alarm bound the fit would print at it."""
    held = np.array(fit["held_out"])
    threshold = rule(held, np.array(fit["synthetic"]))
    return threshold, false_alarm_bound(int((held >= threshold).sum()), held.size)


def judged(fit: dict, rule: Rule) -> tuple[int, int, bool]:
    """Errors, regret, and whether the good test images' alarm rate beat the bound."""
    good, defective = np.array(fit["test_good"]), np.array(fit["test_defective"])
    threshold, bound = placed(fit, rule)
    alarms = int((good >= threshold).sum())
    errors = alarms + int((defective < threshold).sum())
    best = fewest_errors(good, defective)
    return errors, errors - best, alarms / good.size > bound


def by_set(fits: list[dict], names: list[str]) -> None:
    """Per set and k, for each named rule: the share misclassified and the regret, as the
    mean over the draws, and the draws whose good test images beat the printed bound."""
    print("| set | k | draws | " + " | ".join(f"{n}: misclassified, regret, over" for n in names))
    print("|---" * (3 + len(names)) + "|")
    for name, k in dict.fromkeys((fit["set"], fit["shots"]) for fit in fits):
        mine = [fit for fit in fits if (fit["set"], fit["shots"]) == (name, k)]
        cells = []
        for rule in names:
            judged_fits = [judged(fit, RULES[rule]) for fit in mine]
            pairs = zip(judged_fits, mine, strict=True)
            share = np.mean([errors / fit["images"] for (errors, _, _), fit in pairs])
            regret = np.mean([r for _, r, _ in judged_fits])
            over = sum(o for _, _, o in judged_fits)
            cells.append(f"{share:.1%}, {regret:.1f}, {over}")
        print(f"| {name} | {k or 'all'} | {len(mine)} | " + " | ".join(cells) + " |")


def bound_check(fits: list[dict], name: str) -> None:
    """Whether the printed 95% bound holds, pooled: per k, the good test images flagged
    against how many a false-alarm rate at each fit's bound would flag, and the fits whose
    flagged count is that unlikely (binomial tail under 5%) at their bound, against the
    5% of fits that chance alone would give if every rate sat at its bound."""
    print("| k | fits | good flagged | at the bounds | fits over | under 5% at the bound |")
    print("|---" * 6 + "|")
    for k in sorted({fit["shots"] for fit in fits}):
        flagged = good_images = expected = over = unlikely = 0
        mine = [fit for fit in fits if fit["shots"] == k]
        for fit in mine:
            good = np.array(fit["test_good"])
            threshold, bound = placed(fit, RULES[name])
            alarms = int((good >= threshold).sum())
            flagged, good_images = flagged + alarms, good_images + good.size
            expected += bound * good.size
            over += alarms > bound * good.size
            unlikely += binom.sf(alarms - 1, good.size, bound) < 0.05
        print(
            f"| {k or 'all'} | {len(mine)} | {flagged}/{good_images} | {expected:.1f} | "
            f"{over} | {unlikely} (chance: {0.05 * len(mine):.1f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path)
    parser.add_argument("--by-set", nargs="+", metavar="RULE", help="these rules per set and k")
    parser.add_argument("--bound", metavar="RULE", help="whether this rule's printed bound holds")
    args = parser.parse_args()
    fits = [fit for path in args.json for fit in json.loads(path.read_text())]
    if args.by_set:
        by_set(fits, args.by_set)
        return
    if args.bound:
        bound_check(fits, args.bound)
        return
    groups = sorted({fit["shots"] for fit in fits})
    print("| rule | " + " | ".join(f"k={k or 'all'}: errors, regret, over bound" for k in groups))
    print("|---" * (len(groups) + 1) + "|")
    for name, rule in RULES.items():
        cells = []
        for k in groups:
            mine = [judged(fit, rule) for fit in fits if fit["shots"] == k]
            images = sum(fit["images"] for fit in fits if fit["shots"] == k)
            errors = sum(e for e, _, _ in mine)
            regret = sum(r for _, r, _ in mine)
            over = sum(o for _, _, o in mine)
            cells.append(f"{errors}/{images}, {regret}, {over}/{len(mine)}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

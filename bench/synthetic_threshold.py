#!/usr/bin/env python3
"""Which automatic threshold misclassifies fewer test images: mean + 3 std of the held-out
good scores (the fit's rule), or a threshold placed between the held-out good scores and
the scores of synthetic defects made from held-out good images?

Each fit is the library's own (`train.train`, the settings the automatic choice makes for
the set, `common.CHOSEN`): the held-out good scores and the synthetic-defect scores are the
ones the fit computes for its threshold and its detectability table, recorded on the way.
Rules tried on them:

- `mean+3std`: the held-out good scores alone;
- `balanced`: the cut with the fewest false alarms on held-out good images plus misses of
  synthetic defects, each as a share of its kind (the middle of the best cuts);
- `f1`: the cut of best F1 with synthetic defects as the positives (operating_point's rule).

Per set and k training images (k = all, and seeded few-shot draws): test images
misclassified at each rule's threshold, as misses + false alarms, averaged over draws.

    python bench/synthetic_threshold.py [--datasets ...] [--shots 5 10 20] [--draws 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from common import CHOSEN, MVTEC, PYTHON, ROOT, chosen_settings, machine, report

import ind_knn_ad.detectability
import ind_knn_ad.train
from ind_knn_ad.data import Dataset, load_dataset
from ind_knn_ad.operating_point import operating_threshold, parse_operating_point


def balanced(good: np.ndarray, defects: np.ndarray) -> float:
    """The middle of the cuts with the least false-alarm share plus miss share."""
    scores = np.unique(np.concatenate([good, defects]))
    cuts = np.concatenate([[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [scores[-1] * 1.5]])
    alarms = 1 - np.searchsorted(np.sort(good), cuts, side="left") / good.size
    misses = np.searchsorted(np.sort(defects), cuts, side="left") / defects.size
    cost = alarms + misses
    best = np.flatnonzero(cost <= cost.min() + 1e-12)
    return float(cuts[best[len(best) // 2]])


RULES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mean+3std": lambda good, _defects: float(good.mean() + 3 * good.std()),
    "balanced": balanced,
    "f1": lambda good, defects: operating_threshold(
        good, defects, parse_operating_point("f1"), "synthetic"
    )[0],
}


def fit_recording(dataset: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit as make_model.py does; the held-out good scores, the synthetic-defect scores and
    the test scores with their labels (labels stacked under scores)."""
    recorded: dict[str, list[float]] = {"good": [], "defects": []}
    auto_threshold = ind_knn_ad.train.auto_threshold
    measure = ind_knn_ad.detectability.measure

    def threshold(scores: np.ndarray, *args: object) -> tuple[float, dict]:
        recorded["good"] = list(scores)
        return auto_threshold(scores, *args)

    def measuring(paths, preprocess, extractor, held_out, limit, seed=0):
        def scored(features: np.ndarray, cuts: np.ndarray, image: int) -> list[float]:
            found = held_out(features, cuts, image)
            recorded["defects"].extend(found)
            return found

        return measure(paths, preprocess, extractor, scored, limit, seed)

    settings = chosen_settings(dataset.name, dataset.train, seed)
    ind_knn_ad.train.auto_threshold = threshold
    ind_knn_ad.detectability.measure = measuring
    try:
        result = ind_knn_ad.train.train(dataset, settings, device="cpu")
    finally:
        ind_knn_ad.train.auto_threshold = auto_threshold
        ind_knn_ad.detectability.measure = measure
    assert result.evaluation is not None
    good, defective = result.evaluation.labelled_scores()
    test = np.stack(
        [np.concatenate([good, defective]), np.r_[np.zeros(good.size), np.ones(defective.size)]]
    )
    return np.array(recorded["good"]), np.array(recorded["defects"]), test


def run(name: str, shots: list[int], draws: int) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    figures = {}
    plans = [(len(dataset.train), [0])] + [
        (k, list(range(draws))) for k in shots if k < len(dataset.train)
    ]
    for k, seeds in plans:
        wrong: dict[str, list[tuple[int, int]]] = {rule: [] for rule in RULES}
        caught: dict[str, list[float]] = {rule: [] for rule in RULES}
        for seed in seeds:
            chosen = np.sort(np.random.default_rng(seed).choice(len(dataset.train), k, False))
            subset = replace(dataset, train=[dataset.train[i] for i in chosen])
            good, defects, (scores, labels) = fit_recording(subset, seed)
            for rule, place in RULES.items():
                cut = place(good, defects)
                flagged = scores >= cut
                misses = int((~flagged & (labels == 1)).sum())
                wrong[rule].append((misses, int((flagged & (labels == 0)).sum())))
                caught[rule].append(float((defects >= cut).mean()))
        for rule in RULES:
            misses, alarms = np.mean(wrong[rule], axis=0)
            figures[f"{name} k={k} {rule}"] = (
                f"misclassified {misses + alarms:.1f}/{len(dataset.test)} "
                f"({misses:.1f} missed + {alarms:.1f} false alarms); synthetic caught "
                f"{np.mean(caught[rule]):.0%} (mean of {len(seeds)} draws)"
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CHOSEN), choices=list(CHOSEN))
    parser.add_argument("--shots", nargs="*", type=int, default=[5, 10, 20])
    parser.add_argument("--draws", type=int, default=2)
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        figures.update(run(name, args.shots, args.draws))
        print(*(f"{key}: {value}" for key, value in figures.items()), sep="\n", flush=True)
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "synthetic_threshold.py", "--datasets", *args.datasets]
    command += ["--shots", *map(str, args.shots), "--draws", str(args.draws)]
    title = "automatic threshold: held-out good only, or against synthetic defects"
    report(title, command, figures)


if __name__ == "__main__":
    main()

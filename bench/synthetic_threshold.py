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
  synthetic defects, each as a share of its kind (`threshold.balanced_cut`);
- `f1`: the cut of best F1 with synthetic defects as the positives (operating_point's rule);
- `max`: just above the highest held-out good score (good images only);
- `balanced<20`, `max<20`: `balanced` or `max` where fewer than 20 (`threshold.FEW`) good
  images were held out, else `mean+3std`. `balanced<20` is the fit's own rule.

Per set and k training images (k = all, and seeded few-shot draws): test images
misclassified at each rule's threshold, as misses + false alarms, averaged over draws.

    python bench/synthetic_threshold.py [--datasets ...] [--shots 5 10 20] [--draws 2]
        [--save DIR | --load DIR]

`--save` keeps each fit's scores (DIR/<set>_k<k>_d<draw>.npz: good, defects, test, labels);
`--load DIR` judges the rules on scores saved so, without fitting.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import CHOSEN, MVTEC, PYTHON, ROOT, chosen_settings, machine, report
from threshold_rules import balanced_cut

import ind_knn_ad.train
from ind_knn_ad.calibration.operating_point import operating_threshold, parse_operating_point
from ind_knn_ad.calibration.threshold import FEW
from ind_knn_ad.io.datasets import Dataset, load_dataset


def mean_3std(good: np.ndarray, _defects: np.ndarray) -> float:
    return float(good.mean() + 3 * good.std())


def above_all(good: np.ndarray, _defects: np.ndarray) -> float:
    return float(np.nextafter(good.max(), np.inf))


Rule = Callable[[np.ndarray, np.ndarray], float]


def below_few(rule: Rule, good: np.ndarray, defects: np.ndarray) -> float:
    return (rule if good.size < FEW else mean_3std)(good, defects)


RULES: dict[str, Rule] = {
    "mean+3std": mean_3std,
    "balanced": balanced_cut,
    "f1": lambda good, defects: operating_threshold(
        good, defects, parse_operating_point("f1"), "synthetic"
    )[0],
    "max": above_all,
    "balanced<20": lambda good, defects: below_few(balanced_cut, good, defects),
    "max<20": lambda good, defects: below_few(above_all, good, defects),
}


def fit_recording(dataset: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit as make_model.py does; the held-out good scores, the synthetic-defect scores and
    the test scores with their labels (labels stacked under scores)."""
    recorded: dict[str, np.ndarray] = {}
    auto_threshold = ind_knn_ad.train.auto_threshold

    def threshold(scores: np.ndarray, defects: np.ndarray) -> tuple[float, dict]:
        recorded["good"], recorded["defects"] = scores, defects  # the fit's own call sees both
        return auto_threshold(scores, defects)

    settings = chosen_settings(dataset.name, dataset.train, seed)
    ind_knn_ad.train.auto_threshold = threshold
    try:
        result = ind_knn_ad.train.train(settings, dataset, device="cpu")
    finally:
        ind_knn_ad.train.auto_threshold = auto_threshold
    assert result.evaluation is not None
    good, defective = result.evaluation.labelled_scores()
    test = np.stack(
        [np.concatenate([good, defective]), np.r_[np.zeros(good.size), np.ones(defective.size)]]
    )
    return recorded["good"], recorded["defects"], test


def run(
    name: str, shots: list[int], draws: int, save: Path | None, load: Path | None
) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    figures = {}
    plans = [(len(dataset.train), [0])] + [
        (k, list(range(draws))) for k in shots if k < len(dataset.train)
    ]
    for k, seeds in plans:
        wrong: dict[str, list[tuple[int, int]]] = {rule: [] for rule in RULES}
        caught: dict[str, list[float]] = {rule: [] for rule in RULES}
        for seed in seeds:
            file = f"{name}_k{k}_d{seed}.npz"
            if load is not None:
                saved = np.load(load / file)
                good, defects = saved["good"], saved["defects"]
                scores, labels = saved["test"], saved["labels"]
            else:
                chosen = np.sort(np.random.default_rng(seed).choice(len(dataset.train), k, False))
                subset = replace(dataset, train=[dataset.train[i] for i in chosen])
                good, defects, (scores, labels) = fit_recording(subset, seed)
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                arrays = {"good": good, "defects": defects, "test": scores, "labels": labels}
                np.savez(save / file, **arrays)
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
    saving = parser.add_mutually_exclusive_group()
    saving.add_argument("--save", type=Path)
    saving.add_argument("--load", type=Path)
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        figures.update(run(name, args.shots, args.draws, args.save, args.load))
        print(*(f"{key}: {value}" for key, value in figures.items()), sep="\n", flush=True)
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "synthetic_threshold.py", "--datasets", *args.datasets]
    command += ["--shots", *map(str, args.shots), "--draws", str(args.draws)]
    title = "automatic threshold: held-out good only, or against synthetic defects"
    report(title, command, figures)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Do the automatic settings' synthetic catch rates predict real defects?

For each shared set: the choice's candidates (`autosettings.choose`, the larger input's
included where it was tried) with their validation figures, then each candidate fitted on
all of train/good and evaluated on test/ (a fixed threshold: only the ranking is
measured here). Prints each candidate's synthetic catch rate (all, small) against the real
image and pixel ROC AUC, then per set and per synthetic kind Spearman's rank correlation
between the kind's catch rate and the real image and pixel ROC AUC across candidates.
With --subtle, the kinds of bench/subtle_defects.py join the library's for this run.

    python bench/validation_real.py [--datasets grid_512 screw_512] [--subtle]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
from common import MVTEC, machine
from scipy.stats import spearmanr
from subtle_defects import SUBTLE

from ind_knn_ad.calibration import detectability
from ind_knn_ad.config import FitConfig
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.train import train
from ind_knn_ad.tuning.autosettings import choose

DATASETS = ("bottle_256", "hazelnut_reduced", "transistor_reduced", "screw_512", "grid_512")


def spearman(rates: list[float], real: list[float | None]) -> str:
    """Rank correlation across candidates, or why there is none."""
    if any(value is None for value in real):
        return "n/a"
    if len(set(real)) < 2 or len(set(rates)) < 2:
        return "tied"
    return f"{spearmanr(rates, real).statistic:+.2f}"


def rank(name: str) -> None:
    dataset = load_dataset(MVTEC / name, name)
    choice = choose(FitConfig(), dataset.train)
    image, pixel = [], []
    for trial in choice.trials:
        config = replace(
            choice.config,
            preprocess=trial.preprocess,
            backbone=trial.candidate.backbone,
            image_score=trial.candidate.image_score,
            coreset=trial.candidate.coreset_fraction,
        )
        evaluation = train(config, dataset, threshold=1.0).evaluation
        image.append(evaluation.image_rocauc)
        pixel.append(evaluation.pixel_rocauc)
        mark = "**" if trial is choice.chosen else ""
        print(
            f"| {name} | {mark}{trial.preprocess.label} {trial.candidate.name}{mark} "
            f"| {trial.caught:.0%} / {trial.caught_small:.0%} | {image[-1]:.3f} "
            f"| {'n/a' if pixel[-1] is None else f'{pixel[-1]:.3f}'} |",
            flush=True,
        )
    rates = {"all kinds": [t.caught for t in choice.trials]}
    library = [kind for kind in choice.trials[0].by_kind if kind not in SUBTLE]
    rates["library kinds"] = [np.mean([t.by_kind[k] for k in library]) for t in choice.trials]
    for kind in choice.trials[0].by_kind:
        rates[kind] = [t.by_kind[kind] for t in choice.trials]
    for kind, values in rates.items():
        shown = " ".join(f"{v:.0%}" for v in values)
        print(
            f"| {name} | Spearman, {kind} ({shown}) | | {spearman(values, image)} "
            f"| {spearman(values, pixel)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--subtle", action="store_true", help="add bench/subtle_defects.py")
    args = parser.parse_args()
    if args.subtle:
        detectability.DEFECTS = {**detectability.DEFECTS, **SUBTLE}
    print(f"{machine()}\n")
    print("| set | candidate | caught / small caught | image ROC AUC | pixel ROC AUC |")
    print("|---|---|---|---|---|")
    for name in args.datasets:
        rank(name)


if __name__ == "__main__":
    main()

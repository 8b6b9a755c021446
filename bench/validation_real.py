#!/usr/bin/env python3
"""Do the automatic settings' synthetic catch rates predict real defects?

For each shared set: the choice's candidates (`autosettings.choose`, the larger input's
included where it was tried) with their validation figures, then each candidate fitted on
all of train/good and evaluated on test/ (a fixed threshold: only the ranking is
measured here). Prints each candidate's synthetic catch rate (all, small) against the real
image and pixel ROC AUC, and per set Spearman's rank correlation between the catch rate
and the real image ROC AUC.

    python bench/validation_real.py [--datasets grid_512 screw_512]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from common import MVTEC, machine
from scipy.stats import spearmanr

from ind_knn_ad.config import FitConfig
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.train import train
from ind_knn_ad.tuning.autosettings import choose

DATASETS = ("bottle_256", "hazelnut_reduced", "transistor_reduced", "screw_512", "grid_512")


def rank(name: str) -> None:
    dataset = load_dataset(MVTEC / name, name)
    choice = choose(FitConfig(), dataset.train)
    caught, real = [], []
    for trial in choice.trials:
        config = replace(
            choice.config,
            preprocess=trial.preprocess,
            backbone=trial.candidate.backbone,
            image_score=trial.candidate.image_score,
            coreset=trial.candidate.coreset_fraction,
        )
        evaluation = train(config, dataset, threshold=1.0).evaluation
        pixel = evaluation.pixel_rocauc
        mark = "**" if trial is choice.chosen else ""
        print(
            f"| {name} | {mark}{trial.preprocess.label} {trial.candidate.name}{mark} "
            f"| {trial.caught:.0%} / {trial.caught_small:.0%} | {evaluation.image_rocauc:.3f} "
            f"| {'n/a' if pixel is None else f'{pixel:.3f}'} |",
            flush=True,
        )
        caught.append(trial.caught)
        real.append(evaluation.image_rocauc)
    correlation = spearmanr(caught, real).statistic if len(set(real)) > 1 else float("nan")
    print(f"| {name} | Spearman, caught vs image ROC AUC | | {correlation:.2f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    print(f"{machine()}\n")
    print("| set | candidate | caught / small caught | image ROC AUC | pixel ROC AUC |")
    print("|---|---|---|---|---|")
    for name in args.datasets:
        rank(name)


if __name__ == "__main__":
    main()

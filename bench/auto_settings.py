#!/usr/bin/env python3
"""Settings chosen from good images (ind_knn_ad.tuning.autosettings) on every shared MVTec AD set.

For each set: the pose statistic, the choice with its candidate table and choosing
seconds, then two fits without any tuning flag, evaluated on test/: before (today's
defaults with efficientnet_lite0, as `make_model.py --backbone efficientnet_lite0`) and
after (the chosen settings). Each fit row gives the image ROC AUC, the test images
misclassified at the stored threshold and the fit seconds (features, bank, threshold,
detectability and graph export; not the evaluation). A last table sums them up.
bottle_fullres_samples has no training images: only its pose statistic is shown, on its
test/good images.

    python bench/auto_settings.py
    python bench/auto_settings.py --datasets screw_512 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from common import MVTEC
from rich.console import Console

from ind_knn_ad.config import FitConfig
from ind_knn_ad.io.datasets import Dataset, list_images, load_dataset
from ind_knn_ad.train import train
from ind_knn_ad.tuning.autosettings import choose
from ind_knn_ad.tuning.pose import pose_spread

DATASETS = ("bottle_256", "hazelnut_reduced", "transistor_reduced", "screw_512")
POSE_ONLY = "bottle_fullres_samples"
BEFORE = FitConfig(backbone="efficientnet_lite0")


class FitClock:
    """A progress factory for `train` that notes when the evaluation starts."""

    def __init__(self) -> None:
        self.testing_started: float | None = None

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator[None]:
        if description == "Testing":
            self.testing_started = time.perf_counter()
        yield None


def fit(dataset: Dataset, settings: FitConfig, seed: int) -> tuple[float, str, float]:
    """Image ROC AUC, misclassified/total at the stored threshold, fit seconds."""
    clock = FitClock()
    start = time.perf_counter()
    result = train(replace(settings, seed=seed), dataset, device="cpu", progress=clock)
    seconds = (clock.testing_started or time.perf_counter()) - start
    (tn, fp), (fn, tp) = result.evaluation.confusion_matrix
    return result.evaluation.image_rocauc, f"{fp + fn}/{tn + fp + fn + tp}", seconds


def describe(settings: FitConfig) -> str:
    preprocess = settings.preprocess
    if preprocess.align is not None:
        geometry = f"align {preprocess.resize} ({preprocess.size[0]}x{preprocess.size[1]})"
    else:
        geometry = f"{preprocess.resize}/{preprocess.crop}"
    return f"{settings.backbone}, {geometry}, {settings.image_score}, coreset {settings.coreset:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=[*DATASETS, POSE_ONLY])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console(width=120)
    rows = []
    for name in args.datasets:
        folder = MVTEC / name
        if not folder.is_dir():
            print(f"{name}: skipped, {folder} not found", file=sys.stderr)
            continue
        if name == POSE_ONLY:
            pose = pose_spread(list_images(folder / "test" / "good"), args.seed)
            console.print(f"\n[bold]{name}[/] (test/good only, no fit): {pose.summary()}")
            console.print(f"  {pose.reason()}")
            continue
        dataset = load_dataset(folder, name)
        console.print(f"\n[bold]{name}[/]: {len(dataset.train)} training images")
        choice = choose(FitConfig(seed=args.seed), dataset.train, device="cpu")
        if choice.pose is not None:
            console.print(f"  pose: {choice.pose.summary()}")
        console.print(choice.table())
        console.print(f"  choosing: {choice.seconds:.1f} s; chosen: {describe(choice.config)}")
        before = fit(dataset, BEFORE, args.seed)
        after = fit(dataset, choice.config, args.seed)
        for label, (auroc, wrong, seconds) in (("before", before), ("after", after)):
            console.print(
                f"  {label}: image ROC AUC {auroc:.4f}, errors {wrong}, fit {seconds:.1f} s"
            )
        rows.append((name, choice, before, after))
    print(
        "\n| dataset | chosen | choosing s | image ROC AUC before / after | errors before / after "
        "| fit s before / after |"
    )
    print("|---|---|---|---|---|---|")
    for name, choice, before, after in rows:
        print(
            f"| {name} | {describe(choice.config)} | {choice.seconds:.1f} | "
            f"{before[0]:.4f} / {after[0]:.4f} | {before[1]} / {after[1]} | "
            f"{before[2]:.1f} / {after[2]:.1f} |"
        )


if __name__ == "__main__":
    main()

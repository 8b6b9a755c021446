#!/usr/bin/env python3
"""How far do leave-one-image-out scores sit above the scores of new good images, and does
filling the held-out image's holes in the coreset fix it?

Held out by removal: the image is scored against the bank without its own rows. But the coreset
was chosen with the image in it: where only it had patches, its rows are the bank's only
cover, and without them the region is a hole that a coreset chosen without the image would
have covered with other images' patches. "Filled" (`patchcore.held_out.HeldOut`, the
fit's rule) puts back, for each removed row, the nearest patch of another training image:
the cover such a coreset would have had there.

Per set: the mean held-out score against the mean test-good score (bias), the mean + 3 std
threshold of each rule, and the test images misclassified at it.

    python bench/held_out.py [--datasets ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import (
    CHOSEN,
    MVTEC,
    PYTHON,
    ROOT,
    chosen_settings,
    fewest_errors,
    image_scores,
    machine,
    report,
)

from ind_knn_ad.calibration.threshold import auto_threshold
from ind_knn_ad.features.extractor import FeatureExtractor, extract_features
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.methods.patchcore.held_out import HeldOut
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset


def run(name: str) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    settings = chosen_settings(name, dataset.train)
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    train = extract_features(extractor, dataset.train, settings.preprocess)
    test = extract_features(extractor, [t.path for t in dataset.test], settings.preprocess)
    labels = np.array([t.label for t in dataset.test])
    count, patches, channels = train.features.shape
    flat = train.features.reshape(-1, channels)
    chosen = greedy_coreset(flat, coreset_size(len(flat), settings.coreset))
    bank, sources = np.ascontiguousarray(flat[chosen]), chosen // patches
    rule = settings.image_score
    held = {"removed": [], "filled": []}
    for image in range(count):
        own = train.features[image : image + 1]
        region = None if train.regions is None else train.regions[image : image + 1]
        without = bank[sources != image]
        held["removed"].append(image_scores(own, train.grid, without, rule, region)[0])
    start = time.perf_counter()
    held["filled"] = HeldOut(train.features, bank, sources).training_scores(
        train.grid, rule, train.regions
    )
    seconds = time.perf_counter() - start
    tested = image_scores(test.features, train.grid, bank, rule, test.regions)
    tested_good, tested_defective = tested[labels == 0], tested[labels == 1]
    good = tested_good.mean()
    figures = {
        f"{name} test": (
            f"good max {tested_good.max():.2f}, defective min {tested_defective.min():.2f}; "
            f"fewest misclassified at any threshold {fewest_errors(tested_good, tested_defective)}"
        )
    }
    for key, values in held.items():
        values = np.array(values)
        threshold, _ = auto_threshold(values)
        wrong = (tested >= threshold) != (labels == 1)
        misses, alarms = int((wrong & (labels == 1)).sum()), int((wrong & (labels == 0)).sum())
        figures[f"{name} {key}"] = (
            f"held-out mean {values.mean():.2f} (bias {values.mean() / good - 1:+.1%} against "
            f"test good {good:.2f}), std {values.std():.2f}, p95 {np.quantile(values, 0.95):.2f}, "
            f"max {values.max():.2f}; threshold {threshold:.2f}: {misses} misses, "
            f"{alarms} false alarms of {len(labels)}"
        )
    figures[f"{name} filled s"] = f"{seconds:.1f} s for the filled held-out scores"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(CHOSEN), choices=list(CHOSEN))
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        figures.update(run(name))
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "held_out.py", "--datasets", *args.datasets]
    report("leave-one-image-out scores against new good images", command, figures)


if __name__ == "__main__":
    main()

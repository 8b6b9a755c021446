#!/usr/bin/env python3
"""Orientation augmentation of the training images: does adding turned and flipped copies
to the memory bank help parts that lie at any angle, and what does it cost?

For each set and each view set of `ind_knn_ad.features.augment` (`make_model.py --augment`), the
library's PatchCore fit on Lite0 at 256/224 (`max`): the bank chosen from the patches of
the training images and of their views, with as many rows as without views (so scoring
costs the same), and the fit's held-out threshold (an image's views are held out with it).
Prints image ROC AUC, test images misclassified at the threshold, and the seconds of
features and coreset.

    python bench/augment.py [--datasets ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import MVTEC, PYTHON, ROOT, image_scores, machine, report
from sklearn.metrics import roc_auc_score

from ind_knn_ad.calibration.threshold import auto_threshold
from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.augment import VIEW_SETS
from ind_knn_ad.features.extractor import FeatureExtractor, extract_features
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.methods.fitting import no_progress
from ind_knn_ad.methods.patchcore import BANK
from ind_knn_ad.methods.patchcore.fit import FITTER


def run(name: str) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    base = FitConfig(backbone="efficientnet_lite0")
    extractor = FeatureExtractor(base, torch.device("cpu"))
    labels = np.array([t.label for t in dataset.test])
    test = extract_features(extractor, [t.path for t in dataset.test], base.preprocess)
    figures = {}
    for augment in VIEW_SETS:
        settings = FitConfig(backbone=base.backbone, augment=augment)
        start = time.perf_counter()
        train = extract_features(extractor, dataset.train, settings.preprocess, augment=augment)
        extracted = time.perf_counter() - start
        start = time.perf_counter()
        fitted = FITTER.fit(train, settings, "max", no_progress)  # the coreset
        selected = time.perf_counter() - start
        threshold, _ = auto_threshold(fitted.holdout_scores())
        scores = image_scores(test.features, test.grid, fitted.tensors[BANK])
        wrong = (scores >= threshold) != (labels == 1)
        misses, alarms = int((wrong & (labels == 1)).sum()), int((wrong & (labels == 0)).sum())
        figures[f"{name} {augment}"] = (
            f"ROC AUC {roc_auc_score(labels, scores):.4f}; {misses} misses, {alarms} false "
            f"alarms of {len(labels)}; features {extracted:.0f} s, coreset {selected:.0f} s"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["hazelnut_reduced", "transistor_reduced", "screw_512", "bottle_256"]
    parser.add_argument("--datasets", nargs="+", default=names)
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        figures.update(run(name))
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "augment.py", "--datasets", *args.datasets]
    report("orientation augmentation of the training images (same bank size)", command, figures)


if __name__ == "__main__":
    main()

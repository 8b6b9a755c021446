#!/usr/bin/env python3
"""Orientation augmentation of the training images: does adding turned and flipped copies
to the memory bank help parts that lie at any angle, and what does it cost?

For each set, PatchCore on Lite0 at 256/224 (`max`), the bank chosen from the patches of
the training images and of their copies under each augmentation, with as many rows as
without augmentation (so scoring costs the same). The threshold is the fit's held-out rule
(an image's copies are held out with it). Prints image ROC AUC, test images misclassified
at the threshold, and the seconds of features and coreset.

    python bench/augment.py [--datasets ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import MVTEC, PYTHON, ROOT, image_scores, machine, report
from sklearn.metrics import roc_auc_score

from ind_knn_ad.coreset import coreset_size, greedy_coreset
from ind_knn_ad.data import load_dataset
from ind_knn_ad.extractor import FeatureExtractor, FitSettings
from ind_knn_ad.images import ImageError
from ind_knn_ad.pipeline import preprocessed_batches, stack
from ind_knn_ad.threshold import auto_threshold, holdout_scores

# (C, H, W) network input -> its copies; square inputs only (256/224).
AUGMENTATIONS = {
    "none": [],
    "rotations": [lambda a, k=k: np.rot90(a, k, axes=(1, 2)) for k in (1, 2, 3)],
    "flips": [lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, :]],
    "dihedral": [lambda a, k=k: np.rot90(a, k, axes=(1, 2)) for k in (1, 2, 3)]
    + [lambda a, k=k: np.rot90(a[:, :, ::-1], k, axes=(1, 2)) for k in range(4)],
}


def features_of(extractor, paths, preprocess, copies) -> tuple[np.ndarray, tuple[int, int]]:
    """(images, 1 + len(copies), h*w, C) features of each image and its copies."""
    rows = []
    grid = (0, 0)
    for items in preprocessed_batches(paths, preprocess, 8):
        for _, value in items:
            if isinstance(value, ImageError):
                raise value
        _, arrays, _ = stack(items)
        batch = np.stack(
            [np.ascontiguousarray(c(a)) for a in arrays for c in [lambda x: x, *copies]]
        )
        out = extractor(batch)
        _, channels, height, width = out.shape
        grid = (height, width)
        flat = out.transpose(0, 2, 3, 1).reshape(len(arrays), 1 + len(copies), -1, channels)
        rows.append(flat)
    return np.concatenate(rows), grid


def run(name: str) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    settings = FitSettings(backbone="efficientnet_lite0")
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    test_paths = [t.path for t in dataset.test]
    labels = np.array([t.label for t in dataset.test])
    test, grid = features_of(extractor, test_paths, settings.preprocess, [])
    test = test[:, 0]
    figures = {}
    for augmentation, copies in AUGMENTATIONS.items():
        start = time.perf_counter()
        train, grid = features_of(extractor, dataset.train, settings.preprocess, copies)
        extracted = time.perf_counter() - start
        count, views, patches, channels = train.shape
        flat = train.reshape(-1, channels)
        size = coreset_size(count * patches, settings.coreset_fraction)  # rows as without
        start = time.perf_counter()
        chosen = greedy_coreset(flat, size)
        selected = time.perf_counter() - start
        bank = np.ascontiguousarray(flat[chosen])
        sources = chosen // (views * patches)  # copies belong to their image
        held = holdout_scores(train[:, 0], grid, bank, sources, "max")
        threshold, _ = auto_threshold(held)
        scores = image_scores(test, grid, bank)
        wrong = (scores >= threshold) != (labels == 1)
        misses, alarms = int((wrong & (labels == 1)).sum()), int((wrong & (labels == 0)).sum())
        figures[f"{name} {augmentation}"] = (
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

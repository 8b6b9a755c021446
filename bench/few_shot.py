#!/usr/bin/env python3
"""How well does the automatic threshold hold with few training images? For k training
images drawn from train/good (several seeded draws), fit PatchCore's bank as make_model.py
does and set mean + 3 std of the held-out scores as the threshold, then score the training
images not drawn ("new good" images, which the threshold should pass) and the test set at
it. Below 20 images the fit itself cuts against synthetic defects instead
(bench/synthetic_threshold.py measures that rule).

Prints, per dataset and k: the mean held-out (leave-one-image-out) score against the mean
score of new good images (the held-out rule's bias), the false alarms among new good
images, and the test images misclassified. Features are extracted once per dataset.

    python bench/few_shot.py [--datasets ...] [--shots 5 7 10 20 50] [--draws 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import MVTEC, PYTHON, ROOT, image_scores, machine, report

from ind_knn_ad.calibration.threshold import auto_threshold
from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.extractor import FeatureExtractor, extract_features
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.methods.patchcore.held_out import HeldOut
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset


def run(name: str, shots: list[int], draws: int, coreset: float | None) -> dict[str, str]:
    dataset = load_dataset(MVTEC / name, name)
    settings = FitConfig(backbone="efficientnet_lite0", coreset=coreset)
    extractor = FeatureExtractor(settings, torch.device("cpu"))
    train = extract_features(extractor, dataset.train, settings.preprocess)
    test = extract_features(extractor, [t.path for t in dataset.test], settings.preprocess)
    labels = np.array([t.label for t in dataset.test])
    patches = train.features.shape[1]
    figures = {}
    for k in shots:
        if k >= len(dataset.train):
            continue
        rows = []
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            chosen = np.sort(rng.choice(len(dataset.train), k, replace=False))
            rest = np.setdiff1d(np.arange(len(dataset.train)), chosen)
            flat = train.features[chosen].reshape(-1, train.features.shape[2])
            picked = greedy_coreset(flat, coreset_size(len(flat), coreset), seed=draw)
            bank = np.ascontiguousarray(flat[picked])
            sources = picked // patches
            held = HeldOut(train.features[chosen], bank, sources).training_scores(train.grid, "max")
            threshold, _ = auto_threshold(held)
            new = image_scores(train.features[rest], train.grid, bank)
            tested = image_scores(test.features, train.grid, bank)
            wrong = int(((tested >= threshold) != (labels == 1)).sum())
            rows.append((held.mean(), new.mean(), (new >= threshold).mean(), wrong))
        held_mean, new_mean, alarms, wrong = (np.mean([r[i] for r in rows]) for i in range(4))
        figures[f"{name} k={k}"] = (
            f"held-out mean {held_mean:.2f}, new good mean {new_mean:.2f} "
            f"(bias {held_mean / new_mean - 1:+.0%}); new good flagged {alarms:.0%}; "
            f"test misclassified {wrong:.1f}/{len(labels)} (mean of {draws} draws)"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["bottle_256", "hazelnut_reduced", "transistor_reduced", "screw_512"],
    )
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 7, 10, 20, 50])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument(
        "--coreset",
        type=lambda text: None if text == "default" else float(text),
        default=None,
        help="bank fraction, or 'default' (the fit's rule: whole up to 16,384 patches)",
    )
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        figures.update(run(name, args.shots, args.draws, args.coreset))
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "few_shot.py", "--datasets", *args.datasets]
    command += ["--shots", *map(str, args.shots), "--draws", str(args.draws)]
    command += ["--coreset", "default" if args.coreset is None else str(args.coreset)]
    report("automatic threshold with few training images (PatchCore, max)", command, figures)


if __name__ == "__main__":
    main()

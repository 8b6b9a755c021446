#!/usr/bin/env python3
"""Accuracy on real MVTec AD images (../shared/data/mvtec) for a grid of settings.

Prints one row per (dataset, setting, backbone, border rule): image and pixel ROC AUC,
misclassified test images at the automatic (good-images-only) threshold, best F1, fit
seconds (features, bank, threshold and graph export; not the evaluation). The defaults of
make_model.py are the row named `default`. `inner_rocauc` is the image ROC AUC when the
image score is the largest patch distance off the outer ring of patches (computed here
from the patch maps; the model itself scores every patch).

    python bench/accuracy.py                       # every dataset, every setting
    python bench/accuracy.py --datasets screw_512 --settings default size448
    python bench/accuracy.py --datasets screw_512 --settings align768/1%/top10 --seeds 0 1 2
    python bench/accuracy.py --settings default --borders zeros exclude reflect
    python bench/accuracy.py --settings default --backbones efficientnet_lite0 efficientnet_lite1

Settings named `align...` cut the part out in one pose (make_model.py --align), with the
box measured on each dataset's training images. With several --seeds (the coreset's
start and projection) each row is one seed, so the spread that chance alone gives shows.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
from common import MVTEC

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.borders import BORDERS
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.train import train

DATASETS = ("hazelnut_reduced", "transistor_reduced", "bottle_256", "screw_512")
BASE = FitConfig(backbone="efficientnet_lite0")


def small_defects(size: int) -> FitConfig:
    """`size` px per shorter side (the whole frame; the part's cut for `align...` settings),
    a 1% coreset and the top10 score."""
    return replace(BASE, preprocess=Preprocess(size, size), coreset=0.01, image_score="top10")


SETTINGS = {
    "default": BASE,
    "ref256/224": replace(BASE, preprocess=Preprocess(256, 224)),
    "full256": replace(BASE, preprocess=Preprocess(256, 256)),
    "size320": replace(BASE, preprocess=Preprocess(320, 320)),
    "size448": replace(BASE, preprocess=Preprocess(448, 448)),
    "size320/2%": replace(BASE, preprocess=Preprocess(320, 320), coreset=0.02),
    "size448/1%": replace(BASE, preprocess=Preprocess(448, 448), coreset=0.01),
    "size512/1%": replace(BASE, preprocess=Preprocess(512, 512), coreset=0.01),
    "size512/5%": replace(BASE, preprocess=Preprocess(512, 512), coreset=0.05),
    "size448/1%/n5": replace(BASE, preprocess=Preprocess(448, 448), coreset=0.01, neighbourhood=5),
    "size448/1%/l123": replace(
        BASE, preprocess=Preprocess(448, 448), coreset=0.01, layers=(1, 2, 3)
    ),
    "size448/1%/rw": replace(
        BASE, preprocess=Preprocess(448, 448), coreset=0.01, image_score="reweighted"
    ),
    "size512/1%/top10": small_defects(512),
    "size1024/1%/top10": small_defects(1024),
    "align256": replace(BASE, preprocess=Preprocess(256, 256)),
    "align512/1%/top10": small_defects(512),
    "align640/1%/top10": small_defects(640),
    "align768/1%/top10": small_defects(768),
    "align1024/1%/top10": small_defects(1024),
    "top10": replace(BASE, image_score="top10"),
    "layers1,2": replace(BASE, layers=(1, 2)),
    "layers2,3,4": replace(BASE, layers=(2, 3, 4)),
    "neighbourhood1": replace(BASE, neighbourhood=1),
    "neighbourhood5": replace(BASE, neighbourhood=5),
    "coreset0.01": replace(BASE, coreset=0.01),
    "coreset0.25": replace(BASE, coreset=0.25),
    "coreset1.0": replace(BASE, coreset=1.0),
    "noprojection": replace(BASE, projection_dim=1 << 16),
    "reweighted": replace(BASE, image_score="reweighted"),
}


# Other threshold rules, from the held-out statistics stored with the model.
RULES = {
    "max": lambda h: h["max"],
    "mean+3sd": lambda h: h["mean"] + 3 * h["std"],
    "mean+4sd": lambda h: h["mean"] + 4 * h["std"],
    "p95": lambda h: h["p95"],
}


def misclassified(images: list[dict], threshold: float) -> int:
    return sum(int(i["score"] >= threshold) != int(i["defect_type"] != "good") for i in images)


class PatchMaps:
    """Collects each test image's label and patch map (as `evaluate`'s `each`)."""

    def __init__(self) -> None:
        self.labels: list[int] = []
        self.maps: list[np.ndarray] = []

    def __call__(self, image, result, _cut) -> None:
        self.labels.append(int(image.defect_type != "good"))
        self.maps.append(result.patch_map)

    def inner_rocauc(self) -> float:
        """Image ROC AUC of the largest patch distance off the outer ring of each map."""
        from sklearn.metrics import roc_auc_score

        inner = [float(m[1:-1, 1:-1].max()) for m in self.maps]
        return float(roc_auc_score(self.labels, inner))


class FitClock:
    """A progress factory for `train` that notes when the evaluation starts."""

    def __init__(self) -> None:
        self.testing_started: float | None = None

    @contextmanager
    def __call__(self, description: str, total: int):
        if description == "Testing":
            self.testing_started = time.perf_counter()
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--backbones", nargs="+", default=[BASE.backbone], help="each setting with each backbone"
    )
    parser.add_argument(
        "--borders",
        nargs="+",
        choices=BORDERS,
        help="each setting with each border rule (default: the setting's own)",
    )
    args = parser.parse_args()
    print(
        "dataset,setting,backbone,border,seed,image_rocauc,pixel_rocauc,misclassified,best_f1,"
        "fit_s,inner_rocauc," + ",".join(f"wrong@{rule}" for rule in RULES),
        flush=True,
    )
    variants = [
        (label, backbone, border, seed)
        for label in args.settings
        for backbone in args.backbones
        for border in args.borders or [None]
        for seed in args.seeds
    ]
    for name in args.datasets:
        folder = MVTEC / name
        if not folder.is_dir():
            print(f"{name}: skipped, {folder} not found", file=sys.stderr)
            continue
        dataset = load_dataset(folder, name)
        box = None  # measured once per dataset, for the align... settings
        for label, backbone, border, seed in variants:
            settings = replace(SETTINGS[label], seed=seed, backbone=backbone)
            if border is not None:
                settings = replace(settings, border=border)
            if label.startswith("align"):
                box = box or measure_box(dataset.train)
                settings = replace(settings, preprocess=replace(settings.preprocess, align=box))
            clock, maps = FitClock(), PatchMaps()
            start = time.perf_counter()
            result = train(settings, dataset, device="cpu", progress=clock, each=maps)
            seconds = (clock.testing_started or time.perf_counter()) - start
            evaluation = result.evaluation
            (tn, fp), (fn, tp) = evaluation.confusion_matrix
            wrong = f"{fp + fn}/{tn + fp + fn + tp}"
            holdout = result.model.settings["threshold"]["holdout"]
            alternatives = [
                str(misclassified(evaluation.images, rule(holdout))) for rule in RULES.values()
            ]
            pixel = "" if evaluation.pixel_rocauc is None else f"{evaluation.pixel_rocauc:.4f}"
            print(
                f"{name},{label},{backbone},{settings.border},{seed},"
                f"{evaluation.image_rocauc:.4f},{pixel},{wrong},{evaluation.best_f1:.3f},"
                f"{seconds:.1f},{maps.inner_rocauc():.4f}," + ",".join(alternatives),
                flush=True,
            )


if __name__ == "__main__":
    main()

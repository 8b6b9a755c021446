#!/usr/bin/env python3
"""Accuracy on real MVTec AD images (../shared/data/mvtec) for a grid of settings.

Prints one row per (dataset, setting): image and pixel ROC AUC, misclassified test images at
the automatic (good-images-only) threshold, best F1, fit seconds. The defaults of
make_model.py are the row named `default`.

    python bench/accuracy.py                       # every dataset, every setting
    python bench/accuracy.py --datasets screw_512 --settings default size448
    python bench/accuracy.py --datasets screw_512 --settings align768/1%/top10 --seeds 0 1 2

Settings named `align...` cut the part out in one pose (make_model.py --align), with the
box measured on each dataset's training images. With several --seeds (the coreset's
start and projection) each row is one seed, so the spread that chance alone gives shows.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ind_knn_ad.alignment import measure_box  # noqa: E402
from ind_knn_ad.data import load_dataset  # noqa: E402
from ind_knn_ad.images import Preprocess  # noqa: E402
from ind_knn_ad.patchcore import PatchCoreSettings  # noqa: E402
from ind_knn_ad.train import train  # noqa: E402

MVTEC = ROOT.parent / "shared" / "data" / "mvtec"
DATASETS = ("hazelnut_reduced", "transistor_reduced", "bottle_256", "screw_512")
BASE = PatchCoreSettings(backbone="efficientnet_lite0")


def small_defects(size: int) -> PatchCoreSettings:
    """`size` px per shorter side (the whole frame; the part's cut for `align...` settings),
    a 1% coreset and the top10 score."""
    return replace(
        BASE, preprocess=Preprocess(size, size), coreset_fraction=0.01, image_score="top10"
    )


SETTINGS = {
    "default": BASE,
    "ref256/224": replace(BASE, preprocess=Preprocess(256, 224)),
    "full256": replace(BASE, preprocess=Preprocess(256, 256)),
    "size320": replace(BASE, preprocess=Preprocess(320, 320)),
    "size448": replace(BASE, preprocess=Preprocess(448, 448)),
    "size320/2%": replace(BASE, preprocess=Preprocess(320, 320), coreset_fraction=0.02),
    "size448/1%": replace(BASE, preprocess=Preprocess(448, 448), coreset_fraction=0.01),
    "size512/1%": replace(BASE, preprocess=Preprocess(512, 512), coreset_fraction=0.01),
    "size512/5%": replace(BASE, preprocess=Preprocess(512, 512), coreset_fraction=0.05),
    "size448/1%/n5": replace(
        BASE, preprocess=Preprocess(448, 448), coreset_fraction=0.01, neighbourhood=5
    ),
    "size448/1%/l123": replace(
        BASE, preprocess=Preprocess(448, 448), coreset_fraction=0.01, layers=(1, 2, 3)
    ),
    "size448/1%/rw": replace(
        BASE, preprocess=Preprocess(448, 448), coreset_fraction=0.01, image_score="reweighted"
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
    "coreset0.01": replace(BASE, coreset_fraction=0.01),
    "coreset0.25": replace(BASE, coreset_fraction=0.25),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(
        "dataset,setting,seed,image_rocauc,pixel_rocauc,misclassified,best_f1,fit_s,"
        + ",".join(f"wrong@{rule}" for rule in RULES),
        flush=True,
    )
    for name in args.datasets:
        folder = MVTEC / name
        if not folder.is_dir():
            print(f"{name}: skipped, {folder} not found", file=sys.stderr)
            continue
        dataset = load_dataset(folder, name)
        box = None  # measured once per dataset, for the align... settings
        for label, seed in ((label, seed) for label in args.settings for seed in args.seeds):
            start = time.perf_counter()
            settings = replace(SETTINGS[label], seed=seed)
            if label.startswith("align"):
                box = box or measure_box(dataset.train)
                settings = replace(settings, preprocess=replace(settings.preprocess, align=box))
            result = train(dataset, settings, device="cpu")
            seconds = time.perf_counter() - start
            evaluation = result.evaluation
            (tn, fp), (fn, tp) = evaluation.confusion_matrix
            wrong = f"{fp + fn}/{tn + fp + fn + tp}"
            holdout = result.model.settings["threshold"]["holdout"]
            alternatives = [
                str(misclassified(evaluation.images, rule(holdout))) for rule in RULES.values()
            ]
            pixel = "" if evaluation.pixel_rocauc is None else f"{evaluation.pixel_rocauc:.4f}"
            print(
                f"{name},{label},{seed},{evaluation.image_rocauc:.4f},{pixel},{wrong},"
                f"{evaluation.best_f1:.3f},{seconds:.1f}," + ",".join(alternatives),
                flush=True,
            )


if __name__ == "__main__":
    main()

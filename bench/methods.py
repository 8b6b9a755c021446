#!/usr/bin/env python3
"""PatchCore, PaDiM and SPADE side by side on real MVTec AD images (../shared/data/mvtec):
accuracy, fit and score times (efficientnet_lite0, CPU, make_model.py's defaults).

Per dataset, the training features are extracted once and each method is fitted on them
(`fit s` is that extraction plus the method's own fit, threshold and graph export, what
make_model.py spends before testing). The model is then saved, loaded back and scored as
anomaly_detector.py scores: ONNX Runtime, batches of 8 (`ms/image`, after `load s` for
reading the file and starting the graph; no patch maps are made, as without `--heatmap`).
ROC AUCs come from the same loaded model, with maps.

    python bench/methods.py [--datasets bottle_256 hazelnut_reduced] [--border zeros]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import MVTEC

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.borders import BORDERS, DEFAULT_BORDER
from ind_knn_ad.features.device import select_device
from ind_knn_ad.features.extractor import FeatureExtractor, extract_features
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.methods import names
from ind_knn_ad.model_file.store import load_model, save_model
from ind_knn_ad.report.evaluate import evaluate
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.train import fit_method

DATASETS = ("bottle_256", "hazelnut_reduced")
SHARED = (*DATASETS, "transistor_reduced", "screw_512")
COLUMNS = (
    ("dataset", 17),
    ("method", 9),
    ("image AUC", 9),
    ("pixel AUC", 9),
    ("misses", 7),
    ("false al.", 9),
    ("fit s", 6),
    ("load s", 6),
    ("ms/image", 8),
    ("model MB", 8),
)


def row(cells: list[str]) -> str:
    return " | ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def bench(name: str, folder: Path, border: str) -> None:
    dataset = load_dataset(folder, name)
    base = FitConfig(backbone="efficientnet_lite0", border=border)
    extractor = FeatureExtractor(base, select_device("cpu"))
    start = time.perf_counter()
    features = extract_features(extractor, dataset.train, base.preprocess)
    extraction = time.perf_counter() - start
    paths = [item.path for item in dataset.test]
    labels = [item.label for item in dataset.test]
    with tempfile.TemporaryDirectory() as work:
        for method in names():
            start = time.perf_counter()
            model = fit_method(replace(base, method=method), extractor, features, dataset=name)
            fit_seconds = extraction + time.perf_counter() - start
            path = Path(work) / f"{method}.safetensors"
            save_model(model, path)
            start = time.perf_counter()
            loaded = load_model(path)
            detector = Detector(loaded, "cpu", maps=False)  # as without --heatmap
            load_seconds = time.perf_counter() - start
            start = time.perf_counter()
            scores = [result.score for _, result in detector.score_files(paths)]
            per_image = (time.perf_counter() - start) / len(paths) * 1000
            with_maps = Detector(loaded, "cpu")
            evaluation = evaluate(
                with_maps.score_arrays, dataset, with_maps.preprocess, model.threshold
            )
            flagged = [score >= model.threshold for score in scores]
            misses = sum(1 for f, label in zip(flagged, labels, strict=True) if label and not f)
            alarms = sum(1 for f, label in zip(flagged, labels, strict=True) if f and not label)
            pixel = evaluation.pixel_rocauc
            cells = [
                name,
                method,
                f"{evaluation.image_rocauc:.3f}",
                "n/a" if pixel is None else f"{pixel:.3f}",
                f"{misses}/{sum(labels)}",
                f"{alarms}/{len(labels) - sum(labels)}",
                f"{fit_seconds:.1f}",
                f"{load_seconds:.2f}",
                f"{per_image:.0f}",
                f"{path.stat().st_size / 2**20:.0f}",
            ]
            print(row(cells), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=SHARED)
    parser.add_argument("--border", choices=BORDERS, default=DEFAULT_BORDER)
    args = parser.parse_args(argv)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} at start; timings are single runs")
    print(row([title for title, _ in COLUMNS]))
    print(row(["-" * width for _, width in COLUMNS]))
    for name in args.datasets:
        folder = MVTEC / name
        if not (folder / "train" / "good").is_dir():
            raise SystemExit(f"benchmark data not found at {folder}")
        bench(name, folder, args.border)


if __name__ == "__main__":
    main()

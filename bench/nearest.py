#!/usr/bin/env python3
"""Nearest-neighbour search alone, in process: ms per image for the 83 bottle_256 test
images against the model's memory bank, with patch maps (every patch searched in full) and
without (scores only: `score_features(..., maps=False)`, the same scores bit for bit).

    python bench/nearest.py [--runs 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import BOTTLE, PYTHON, ROOT, ensure_model, machine, report, spread

from ind_knn_ad.methods.patchcore.image_score import score_features
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.search.nearest import SearchBank


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    model = load_model(ensure_model())
    detector = Detector(model, "cpu")
    paths = sorted((BOTTLE / "test").rglob("*.png"))
    images = np.stack([detector.preprocess.load(path) for path in paths])
    batches = [detector.features(images[i : i + 8]) for i in range(0, len(images), 8)]
    bank = model.tensors["memory_bank"]
    searchable = SearchBank.of(bank)  # as methods.make_scorer prepares it once per model
    rule = model.settings["image_score"]
    figures = {}
    for maps in (True, False):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            for features in batches:
                score_features(features, searchable, rule, maps=maps)
            times.append((time.perf_counter() - start) / len(paths) * 1e3)
        figures["with maps" if maps else "scores only"] = spread(times, "ms/image", 1)
    figures["bank"] = f"{bank.shape[0]} x {bank.shape[1]}, batches of 8 images"
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "nearest.py"]
    report("nearest-neighbour search, 83 bottle_256 test images", command, figures)


if __name__ == "__main__":
    main()

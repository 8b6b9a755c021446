#!/usr/bin/env python3
"""The coreset alone on real features: plain greedy k-center against the two-stage greedy
(search/two_stage.py) on grid_512 train/good at 512 px full frame (Lite0, 1% bank): CPU
seconds and the radius each bank covers the projected patches with (the largest distance
from a patch to its nearest bank row; plain greedy's is the smallest a greedy choice gives).

    python bench/two_stage.py [--oversample 4 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import MVTEC, machine

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.extractor import FeatureExtractor, extract_features
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.search import two_stage
from ind_knn_ad.search.coreset import coreset_size, project
from ind_knn_ad.search.k_center import k_center_radius, start_index

SETTINGS = FitConfig(
    backbone="efficientnet_lite0", coreset=0.01, preprocess=Preprocess(resize=512, crop=512)
)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def covering_radius(points: np.ndarray, chosen: np.ndarray) -> float:
    bank = points[chosen]
    bank_norms = np.einsum("ij,ij->i", bank, bank)
    worst = 0.0
    for start in range(0, len(points), 8192):
        rows = points[start : start + 8192]
        squared = np.einsum("ij,ij->i", rows, rows)[:, None] - 2 * rows @ bank.T + bank_norms
        worst = max(worst, float(squared.min(axis=1).max()))
    return float(np.sqrt(max(worst, 0.0)))


def timed(name: str, points: np.ndarray, choose) -> None:
    began, cpu = time.perf_counter(), cpu_seconds()
    chosen = choose()
    seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    radius = covering_radius(points, chosen)
    print(f"  {name:<28} {cpu:6.0f} CPU s {seconds:6.0f} wall s  radius {radius:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oversample", type=int, nargs="+", default=[two_stage.OVERSAMPLE])
    args = parser.parse_args()
    paths = sorted(Path(MVTEC / "grid_512" / "train" / "good").glob("*.png"))
    extractor = FeatureExtractor(SETTINGS, torch.device("cpu"))
    train = extract_features(extractor, paths, SETTINGS.preprocess)
    _images, patches, channels = train.features.shape
    flat = train.features.reshape(-1, channels)
    points = project(flat, SETTINGS.projection_dim, SETTINGS.seed)
    size = coreset_size(len(points), SETTINGS.coreset)
    print(f"grid_512 at 512 px: {len(points)} patches, bank {size}; machine: {machine()}")
    for oversample in args.oversample:
        two_stage.OVERSAMPLE = oversample
        timed(
            f"two stages, {oversample}x union",
            points,
            lambda: two_stage.two_stage_k_center(points, size, SETTINGS.seed, patches),
        )
    start = start_index(len(points), SETTINGS.seed)
    timed("plain greedy", points, lambda: k_center_radius(points, size, start)[0])


if __name__ == "__main__":
    main()

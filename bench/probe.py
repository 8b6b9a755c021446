#!/usr/bin/env python3
"""What-if grid for PatchCore choices, on any device: image ROC AUC per setting.

Features are extracted once per (input size, stages, neighbourhood, augmentation) with the
library's own extractor and preprocessing; bank sizes and image-score rules are then tried
on those features with a torch nearest-neighbour search (CUDA when present). On a GPU the
greedy coreset is a plain torch loop, the same algorithm as `ind_knn_ad.search.coreset` (which
the CPU uses), so a GPU can try banks that would take minutes on a laptop CPU.
make_model.py remains the measure of record (bench/accuracy.py); this script decides what
is worth measuring there.

    python bench/probe.py --data ../shared/data/mvtec/screw_512 --features 512/2,3/3/none
    python bench/probe.py --data ../shared/data/mvtec/bottle_256 --features 256:224/2,3/3/none
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ind_knn_ad.config import FitConfig
from ind_knn_ad.errors import ImageError
from ind_knn_ad.features.extractor import FeatureExtractor
from ind_knn_ad.io.batches import preprocessed_batches, stack
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.search.coreset import greedy_coreset, project

AUGMENTATIONS = {
    "none": [(0, False)],
    "rot4": [(k, False) for k in range(4)],
    "rot4flip": [(k, flip) for k in range(4) for flip in (False, True)],
}


def arrays(paths: list[Path], preprocess: Preprocess) -> np.ndarray:
    """Preprocessed images in order; an unreadable one stops the probe (dropping it would
    shift every test label after it)."""
    batches = []
    for items in preprocessed_batches(paths, preprocess, 32):
        for _, value in items:
            if isinstance(value, ImageError):
                raise SystemExit(str(value))
        batches.append(stack(items)[1])
    return np.concatenate(batches)


def features(extractor: FeatureExtractor, images: np.ndarray) -> torch.Tensor:
    """(N, h*w, C) patch features on the probe's device."""
    out = [torch.from_numpy(extractor(images[i : i + 16])) for i in range(0, len(images), 16)]
    maps = torch.cat(out)
    return maps.permute(0, 2, 3, 1).reshape(len(images), -1, maps.shape[1])


def augmented(images: np.ndarray, augmentation: str) -> np.ndarray:
    views = []
    for turns, flip in AUGMENTATIONS[augmentation]:
        view = np.rot90(images, turns, axes=(2, 3))
        views.append(np.ascontiguousarray(view[..., ::-1] if flip else view))
    return np.concatenate(views)


def greedy(points: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Greedy k-center indices (the same rule as ind_knn_ad.search.coreset, plain loop)."""
    start = int(np.random.default_rng(seed).integers(len(points)))
    chosen = torch.empty(size, dtype=torch.long, device=points.device)
    chosen[0] = start
    nearest = torch.linalg.vector_norm(points - points[start], dim=1)
    for step in range(1, size):
        index = torch.argmax(nearest)
        chosen[step] = index
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(points - points[index], dim=1))
    return chosen


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """Distance of each query row to its nearest bank row, bank taken in chunks."""
    best = torch.full((len(queries),), float("inf"), device=queries.device)
    query_norms = (queries * queries).sum(1, keepdim=True)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        squared = query_norms - 2 * queries @ part.T + (part * part).sum(1)
        best = torch.minimum(best, squared.min(1).values)
    return best.clamp_min(0).sqrt()


def image_scores(maps: torch.Tensor) -> dict[str, np.ndarray]:
    """(N, h, w) patch distance maps to image scores under several rules."""
    flat = maps.flatten(1)
    rules = {"max": flat.max(1).values, "top10": flat.topk(10, dim=1).values.mean(1)}
    for sigma in (1.0, 2.0):
        radius = int(4 * sigma)
        grid = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
        kernel = torch.exp(-(grid**2) / (2 * sigma**2))
        kernel /= kernel.sum()
        blurred = F.conv2d(
            F.pad(maps[:, None], (radius,) * 4, mode="replicate"),
            (kernel[:, None] * kernel[None, :])[None, None],
        )
        rules[f"blur{sigma:g}"] = blurred.flatten(1).max(1).values
    return {name: value.cpu().numpy() for name, value in rules.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--features",
        nargs="+",
        default=["512/2,3/3/none"],
        help="size[:crop]/stages/neighbourhood/augmentation, e.g. 640/1,2,3/3/rot4",
    )
    parser.add_argument("--banks", nargs="+", default=["full", "0.1", "0.01"])
    parser.add_argument("--limit", type=int, default=0, help="use the first N train images")
    parser.add_argument("--chunk", type=int, default=1 << 18)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_dataset(args.data)
    train = dataset.train[: args.limit or None]
    labels = np.array([item.label for item in dataset.test])
    print(f"# {dataset.name}: {len(train)} train, {len(labels)} test, device {device}")
    print("features,bank,bank_rows,rule,image_rocauc,seconds", flush=True)
    for spec in args.features:
        size, stages, neighbourhood, augmentation = spec.split("/")
        resize, _, crop = size.partition(":")
        preprocess = Preprocess(int(resize), int(crop or resize))
        settings = FitConfig(
            backbone="efficientnet_lite0",
            layers=tuple(int(s) for s in stages.split(",")),
            neighbourhood=int(neighbourhood),
            preprocess=preprocess,
        )
        extractor = FeatureExtractor(settings, device)
        started = time.perf_counter()
        train_rows = features(extractor, augmented(arrays(train, preprocess), augmentation))
        train_rows = train_rows.reshape(-1, train_rows.shape[-1]).to(device)
        test_rows = features(extractor, arrays([item.path for item in dataset.test], preprocess))
        grid = round(test_rows.shape[1] ** 0.5)
        extracted = time.perf_counter() - started
        for bank_name in args.banks:
            started = time.perf_counter()
            if bank_name == "full":
                bank = train_rows
            else:
                size_k = max(1, int(np.ceil(float(bank_name) * len(train_rows))))
                if device.type == "cpu":
                    chosen = torch.from_numpy(greedy_coreset(train_rows.numpy(), size_k))
                else:
                    projected = torch.from_numpy(project(train_rows.cpu().numpy(), 128, 0))
                    chosen = greedy(projected.to(device), size_k)
                bank = train_rows[chosen.to(device)]
            maps = torch.stack(
                [nearest_distances(rows.to(device), bank, args.chunk) for rows in test_rows]
            ).reshape(len(test_rows), grid, grid)
            seconds = extracted + time.perf_counter() - started
            for rule, scores in image_scores(maps).items():
                auc = roc_auc_score(labels, scores)
                print(f"{spec},{bank_name},{len(bank)},{rule},{auc:.4f},{seconds:.1f}", flush=True)
        del train_rows, test_rows, extractor
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

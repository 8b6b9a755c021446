#!/usr/bin/env python3
"""Fits on thousands of photos: peak memory and time against the image count, in memory or
streamed, the memory plan's estimate beside the measured peak, the labelled test set's ROC
AUC and errors at the stored threshold, and scoring time against the bank.

The training photos are bottle_256's, in flips, rotations and crops (scale_fit.py), each
with a seeded jitter of brightness, contrast and position so that no two are the same; the
test set is bottle_256's. Built once under the benchmark directory.

    python bench/stream_fit.py --images 2000 --mode memory --mode streamed
    python bench/stream_fit.py --images 10000 --mode auto
    python bench/stream_fit.py --score 200 --score 10000   # after fits at those counts
    python bench/stream_fit.py --refuse 2000   # a fit that cannot fit: how soon it is refused

Each fit runs in a child process (`--child`), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from common import BOTTLE, OFFLINE, PYTHON, ROOT, WORK, machine, report, run, spread
from PIL import Image, ImageEnhance
from scale_fit import build as variants

from ind_knn_ad.io.limits import FIT_ADDRESS_PER_PIXEL, FIT_ADDRESS_SPACE

MODES = ("auto", "memory", "streamed")


def jittered(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`image` with brightness and contrast within 8% and shifted by up to 4 px."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.92, 1.08))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.92, 1.08))
    dx, dy = rng.integers(-4, 5, size=2)
    return image.rotate(0, translate=(int(dx), int(dy)), resample=Image.BILINEAR)


def build(count: int, seed: int = 0) -> Path:
    """A dataset of `count` jittered training photos and bottle_256's test set."""
    root = WORK / f"stream_{count}"

    def jitter(image: Image.Image, index: int) -> Image.Image:
        return jittered(image, np.random.default_rng([seed, index]))

    variants(root / "train" / "good", count, jitter)
    if not (root / "test").exists():
        (root / "test").symlink_to(BOTTLE / "test")
    return root


def child(root: Path, mode: str, model: Path) -> None:
    """One fit in this process, as make_model.py runs it but in the mode asked for; prints
    one JSON line of its figures."""
    import time

    from ind_knn_ad.cli import preflight
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.io.datasets import load_dataset
    from ind_knn_ad.model_file.store import save_model
    from ind_knn_ad.train import train

    start = time.perf_counter()
    dataset = load_dataset(root, root.name)
    config = FitConfig(backbone=OFFLINE)
    plan = preflight.check_fit(dataset, config, True)
    planned = time.perf_counter() - start
    assert plan is not None
    stream = {"auto": plan.stream, "memory": None, "streamed": plan.chunk_images}[mode]
    result = train(config, dataset, device="cpu", stream=stream)
    save_model(result.model, model)
    evaluation = result.evaluation
    assert evaluation is not None
    (_, false_alarms), (misses, _) = evaluation.confusion_matrix
    figures = {
        "planned_s": planned,
        "streamed": stream is not None,
        "estimate_gb": (plan.streaming if stream else plan.in_memory) / 1e9,
        "bank": result.model.settings["coreset"]["size"],
        "auc": evaluation.image_rocauc,
        "errors": false_alarms + misses,
    }
    print(json.dumps(figures))


def fit(count: int, mode: str) -> None:
    root = build(count)
    model = WORK / f"stream_{count}_{mode}.safetensors"
    command = [PYTHON, ROOT / "bench" / "stream_fit.py", "--child", root, mode, model]
    result = run(command)
    figures = json.loads(result.stdout.splitlines()[-1])
    report(
        f"fit on {count} photos, {mode}",
        command,
        {
            "in": "streamed" if figures["streamed"] else "memory",
            "wall time": f"{result.seconds:.0f} s ({result.cpu_seconds:.0f} CPU s)",
            "peak RSS": f"{result.peak_rss_mb / 1000:.2f} GB",
            "estimate": f"{figures['estimate_gb']:.2f} GB, planned in {figures['planned_s']:.1f} s",
            "bank": str(figures["bank"]),
            "image ROC AUC": f"{figures['auc']:.4f}",
            "errors at threshold": str(figures["errors"]),
            "machine": machine(),
        },
    )


def score(count: int) -> None:
    """Batch scoring of bottle_256's test set with the model fitted on `count` photos."""
    model = next(WORK.glob(f"stream_{count}_*.safetensors"))
    images = sorted(str(path) for path in (BOTTLE / "test").rglob("*.png"))
    command = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, "--device", "cpu", *images]
    runs = [run(command) for _ in range(3)]
    report(
        f"batch scoring, {len(images)} images, model fitted on {count} photos",
        [*command[:6], f"<{len(images)} images>"],
        {
            "wall time": f"best of 3: {min(each.seconds for each in runs):.2f} s",
            "CPU time": f"best of 3: {min(each.cpu_seconds for each in runs):.2f} s",
            "machine": machine(),
        },
    )


def refuse(count: int, runs: int = 5) -> None:
    """A fit on `count` links to bottle_256's training photos under an address-space limit
    300 MB above what any fit maps, where neither way fits: how soon it is refused."""
    root = WORK / f"links_{count}"
    good = root / "train" / "good"
    if not good.is_dir():
        good.mkdir(parents=True)
        sources = sorted((BOTTLE / "train" / "good").glob("*.png"))
        for index in range(count):
            (good / f"{index:05d}.png").symlink_to(sources[index % len(sources)])
    limit = FIT_ADDRESS_SPACE + FIT_ADDRESS_PER_PIXEL * 224 * 224 + 300_000_000
    model = WORK / "refused.safetensors"
    command = [
        "prlimit",
        f"--as={limit}",
        PYTHON,
        ROOT / "make_model.py",
        *("--data-dir", root, "--device", "cpu", "--model", model),
    ]
    done = [run(command, expect=2) for _ in range(runs)]
    report(
        f"fit on {count} photos refused (exit 2)",
        command,
        {
            "wall time": spread([each.seconds for each in done], "s"),
            "CPU time": spread([each.cpu_seconds for each in done], "s"),
            "said": done[0].stderr.strip().splitlines()[-1],
            "machine": machine(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    if argv is None and sys.argv[1:2] == ["--child"]:
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        child(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, action="append", default=[])
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--score", type=int, action="append", default=[])
    parser.add_argument("--refuse", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    for count in args.refuse:
        refuse(count)
    for count in args.images:
        for mode in args.mode or ["auto"]:
            fit(count, mode)
    for count in args.score:
        score(count)


if __name__ == "__main__":
    main()

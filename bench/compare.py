#!/usr/bin/env python3
"""Scoring speed of an earlier revision against the working tree, runs interleaved so that
both see the same machine load: one-off call, batch of 83 bottle_256 images, and the
nearest-neighbour search alone (ms/image with and without maps).

The earlier revision is checked out in a temporary git worktree and fits the model both
trees score, so an older loader can read it.

    python bench/compare.py [--before REV] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from common import BOTTLE, PYTHON, ROOT, fit_command, machine, run, shown, worktree

# Run in each tree: features once, then the method's scorer alone (as the command line
# builds it, once per model), best of 3, in ms per image.
NEAREST = """
import sys, time
import numpy as np
from pathlib import Path
from ind_knn_ad.methods import make_scorer
try:
    from ind_knn_ad.model_file.store import load_model
    from ind_knn_ad.runtime.detector import Detector
except ImportError:  # revisions before the subpackages
    from ind_knn_ad.model_file import load_model
    from ind_knn_ad.runtime import Detector
model = load_model(sys.argv[1])
detector = Detector(model, "cpu")
paths = sorted(Path(sys.argv[2]).rglob("*.png"))
prepared = [detector.preprocess.prepare_file(path) for path in paths]
images = np.stack([p.array for p in prepared])
cuts = np.stack([p.cut for p in prepared])
chunks = [slice(i, i + 8) for i in range(0, len(images), 8)]
batches = [(detector.features(images[chunk]), cuts[chunk]) for chunk in chunks]
for maps in (True, False):
    scorer = make_scorer(model, detector.preprocess, maps)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for features, batch_cuts in batches:
            scorer(features, batch_cuts)
        best = min(best, (time.perf_counter() - start) / len(paths) * 1e3)
    print(best)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with worktree(args.before) as before:
        compare(before, before.parent / "bottle.safetensors", args.runs, args.before)


def compare(before: Path, model: Path, runs: int, revision: str) -> None:
    fit = fit_command(BOTTLE, model)
    fit[1] = before / "make_model.py"
    # Earlier revisions know no --settings (their defaults are what it fixes) and no
    # --force (they replace the model unasked).
    fit.remove("--force")
    index = fit.index("--settings")
    run(fit[:index] + fit[index + 2 :])
    images = sorted((BOTTLE / "test").rglob("*.png"))
    one = images[0]
    figures: dict[str, dict[str, list[float]]] = {}

    def add(name: str, tree: str, value: float) -> None:
        figures.setdefault(name, {"before": [], "after": []})[tree].append(value)

    for _ in range(runs):
        for tree, root in (("before", before), ("after", ROOT)):
            score = [PYTHON, root / "anomaly_detector.py", "--model", model]
            add("one-off call (s)", tree, run([*score, one]).seconds)
            add("batch, 83 images (images/s)", tree, len(images) / run([*score, *images]).seconds)
            nearest = subprocess.run(
                [PYTHON, "-c", NEAREST, str(model), str(BOTTLE / "test")],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            with_maps, scores_only = map(float, nearest.stdout.split())
            add("nearest, with maps (ms/image)", tree, with_maps)
            add("nearest, scores only (ms/image)", tree, scores_only)
    print(f"\n== before ({revision}) and after (working tree), interleaved, {runs} runs each")
    print(f"$ python bench/compare.py --before {revision} --runs {runs}")
    print(f"  model: {shown(fit)}")
    print(f"  machine: {machine()}")
    print("| figure (median) | before | after | change |\n|---|---|---|---|")
    for name, trees in figures.items():
        old, new = statistics.median(trees["before"]), statistics.median(trees["after"])
        print(f"| {name} | {old:.3g} | {new:.3g} | {100 * (new - old) / old:+.0f}% |")


if __name__ == "__main__":
    main()

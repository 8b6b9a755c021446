#!/usr/bin/env python3
"""The printed flag on every shared set, fitted as a user fits with no flag at all.

Each fit runs `autosettings.choose` and `train` on train/good (all of it, or k images drawn
with a seeded generator) in its own process, so its peak memory is its own, and is judged
on test/: image and pixel ROC AUC, the test images misclassified at the stored threshold,
the fewest misclassified at any threshold (in hindsight), their difference (the threshold's
regret), and the false alarms on good test images against the upper bound the fit prints.
Fit seconds are the choice and the fit, without the evaluation.

    python bench/flags.py                                  # every shared set, all images
    python bench/flags.py --shots 5 7 10 20 --draws 3      # few-shot draws
    python bench/flags.py --shots 5 --draws 2 --first-draw 1   # draws 1 and 2 only
    python bench/flags.py --datasets grid_512 --revision HEAD~3   # an earlier revision's code
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from common import MVTEC, ROOT, fewest_errors, machine, worktree

DATASETS = ("hazelnut_reduced", "transistor_reduced", "bottle_256", "screw_512", "grid_512")


def fit_one(folder: Path, shots: int, draw: int) -> dict:
    """One fit's figures (in this process, whose code comes from PYTHONPATH)."""
    import numpy as np

    import ind_knn_ad.train as train_module
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.io.datasets import load_dataset
    from ind_knn_ad.tuning.autosettings import choose

    name = folder.name
    dataset = load_dataset(folder, name)
    if shots:
        drawn = np.random.default_rng(draw).choice(len(dataset.train), shots, replace=False)
        dataset = replace(dataset, train=[dataset.train[i] for i in sorted(drawn)])
    clock: dict[str, float] = {}

    @contextmanager
    def timed(description: str, total: int) -> Iterator[None]:
        began = time.perf_counter()
        yield None
        clock[description] = clock.get(description, 0.0) + time.perf_counter() - began

    placed: dict[str, list[float]] = {}
    train_module.auto_threshold = _recording(train_module.auto_threshold, placed)
    start = time.perf_counter()
    choice = choose(FitConfig(), dataset.train, progress=timed)
    result = train_module.train(choice.config, dataset, progress=timed)
    seconds = time.perf_counter() - start - clock.get("Testing", 0.0)
    evaluation, settings = result.evaluation, result.model.settings
    good, defective = evaluation.labelled_scores()
    threshold = evaluation.threshold
    false_alarms = int((good >= threshold).sum())
    misses = int((defective < threshold).sum())
    preprocess = choice.config.preprocess
    # Spelled out, not Preprocess.label: the earlier revisions this runs under lack it.
    geometry = (
        f"aligned {preprocess.resize}"
        if preprocess.align is not None
        else f"{preprocess.resize}/{preprocess.crop}"
    )
    return {
        "set": name,
        "shots": shots,
        "draw": draw,
        "chosen": f"{geometry} {choice.chosen.candidate.name if choice.chosen else '-'}",
        "reason": choice.reason,
        "image_rocauc": evaluation.image_rocauc,
        "pixel_rocauc": evaluation.pixel_rocauc,
        "threshold": threshold,
        "false_alarms": false_alarms,
        "misses": misses,
        "images": int(good.size + defective.size),
        "good": int(good.size),
        "best_errors": fewest_errors(good, defective),
        "bound": settings["threshold"]["expected_false_alarms"]["upper_95"],
        "seconds": seconds,
        "choose_seconds": choice.seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # What the threshold was placed on, and where the test images fell, for trying
        # other threshold rules on the same fits (bench/threshold_rules.py).
        **placed,
        "test_good": good.tolist(),
        "test_defective": defective.tolist(),
    }


def _recording(rule, placed: dict):
    """`rule` (auto_threshold), keeping the held-out and synthetic scores it is given."""

    def recorded(scores, defects=None, *args, **kwargs):
        placed["held_out"] = [float(s) for s in scores]
        placed["synthetic"] = [] if defects is None else [float(s) for s in defects]
        return rule(scores, defects, *args, **kwargs)

    return recorded


def run_child(code: Path, name: str, shots: int, draw: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(code)}
    # The data's folder from here: an earlier revision's checkout has no ../shared beside it.
    command = [sys.executable, __file__, "--one", str(MVTEC / name), str(shots), str(draw)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(figures: dict) -> str:
    errors = figures["false_alarms"] + figures["misses"]
    pixel = figures["pixel_rocauc"]
    return (
        f"| {figures['set']} | {figures['shots'] or 'all'} | {figures['draw']} "
        f"| {figures['chosen']} | {figures['image_rocauc']:.3f} "
        f"| {'n/a' if pixel is None else f'{pixel:.3f}'} "
        f"| {errors}/{figures['images']} ({figures['false_alarms']} FA, {figures['misses']} miss) "
        f"| {errors - figures['best_errors']} "
        f"| {figures['false_alarms'] / figures['good']:.0%} / {figures['bound']:.0%} "
        f"| {figures['seconds']:.0f} ({figures['choose_seconds']:.0f}) | {figures['peak_mb']:.0f} |"
    )


def summary(rows: list[dict]) -> list[str]:
    """Per set and k: the mean share misclassified and regret over the draws."""
    lines = ["| set | k | ROC AUC, mean | misclassified, mean | regret, mean / max |", "|---|" * 5]
    lines[1] = "|---|---|---|---|---|"
    keys = dict.fromkeys((figures["set"], figures["shots"]) for figures in rows)
    for name, shots in keys:
        mine = [f for f in rows if (f["set"], f["shots"]) == (name, shots)]
        errors = [(f["false_alarms"] + f["misses"]) / f["images"] for f in mine]
        regret = [f["false_alarms"] + f["misses"] - f["best_errors"] for f in mine]
        auroc = statistics.mean(f["image_rocauc"] for f in mine)
        lines.append(
            f"| {name} | {shots or 'all'} | {auroc:.3f} | {statistics.mean(errors):.1%} "
            f"| {statistics.mean(regret):.1f} / {max(regret)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=[0], help="0: all images")
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--first-draw", type=int, default=0, help="draws from this one on")
    parser.add_argument("--revision", help="fit with this revision's library instead")
    parser.add_argument("--json", type=Path, help="also write every fit's figures here")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder, shots, draw = args.one
        print(json.dumps(fit_one(Path(folder), int(shots), int(draw))))
        return
    print(f"{machine()}\n")
    print(
        "| set | k | draw | chosen | image ROC AUC | pixel ROC AUC | misclassified "
        "| regret | good flagged / bound | fit s (choosing) | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with worktree(args.revision) if args.revision else _here() as code:
        for name in args.datasets:
            for shots in args.shots:
                for draw in range(args.first_draw, args.first_draw + (args.draws if shots else 1)):
                    rows.append(run_child(code, name, shots, draw))
                    print(row(rows[-1]), flush=True)
                    if args.json:  # after every fit, so a long run's fits are kept
                        args.json.write_text(json.dumps(rows))
    print("\n" + "\n".join(summary(rows)))


@contextmanager
def _here() -> Iterator[Path]:
    yield ROOT


if __name__ == "__main__":
    main()

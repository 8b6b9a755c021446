#!/usr/bin/env python3
"""Input resolution against cost: a shared set's automatic settings (`common.CHOSEN`, aligned
where the choice aligns) at several input sizes, each fitted by `make_model.py` with those
settings given as flags, so nothing else is searched and only the input differs.

Per size: image and pixel ROC AUC, the test images misclassified at the stored threshold and
its regret (that minus the fewest misclassified at any threshold), make_model.py's wall and
CPU seconds (fit and evaluation) and peak memory, a one-off call's seconds (median of 5) and
the batch rate over the set's test images (better of 2 runs).

With --validation, no fit: the automatic settings' validation of the same settings at each
size (`tuning.validation`, as the choice runs it), to compare with the real figures: the
share of synthetic defects caught above every held-out good image (all, and the small
ones) and their ROC AUC against the held-out good images.

    python bench/resolution.py --datasets grid_512 screw_512 --sizes 384 448 512
    python bench/resolution.py --validation --sizes 384 448 512 640 768
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from common import (
    ALIGNED,
    CHOSEN,
    MVTEC,
    PYTHON,
    ROOT,
    chosen_settings,
    fewest_errors,
    machine,
    run,
    shown,
)

from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.methods.fitting import no_progress
from ind_knn_ad.report.evaluate import scores_by_label
from ind_knn_ad.tuning.validation import Candidate, _Validation


def flags(name: str, size: int | str) -> list[str]:
    """make_model.py's flags for `name`'s chosen settings at input `size`."""
    settings = CHOSEN[name]
    given = ["--backbone", settings.backbone, "--image-score", settings.image_score]
    if settings.coreset is not None:
        given += ["--coreset", str(settings.coreset)]
    if name in ALIGNED:
        return [*given, "--align", "--image-size", str(size)]
    return [*given, "--image-size", str(size), "--crop", str(size)]


def measure(name: str, size: int, work: Path) -> str:
    """One fit at `size` and its scoring speed, as a table row."""
    model = work / f"{name}_{size}.safetensors"
    command = [PYTHON, ROOT / "make_model.py", "--data-dir", MVTEC / name, "--model", model]
    fit = run([*command, *flags(name, size)])
    results = json.loads(model.with_suffix(".results.json").read_text())
    good, defective = scores_by_label(results["images"])
    (_, false_alarms), (misses, _) = results["confusion_matrix"]
    errors = false_alarms + misses
    regret = errors - fewest_errors(good, defective)
    images = sorted((MVTEC / name / "test").rglob("*.png"))
    score = [PYTHON, ROOT / "anomaly_detector.py", "--model", model]
    run([*score, images[0]])  # into the page cache
    one_off = statistics.median(run([*score, images[0]]).seconds for _ in range(5))
    batch = max(len(images) / run([*score, *images]).seconds for _ in range(2))
    pixel = results["pixel_rocauc"]
    return (
        f"| {name} | {size} | {results['image_rocauc']:.3f} "
        f"| {'n/a' if pixel is None else f'{pixel:.3f}'} | {errors}/{good.size + defective.size} "
        f"| {regret} | {fit.seconds:.0f} / {fit.cpu_seconds:.0f} | {fit.peak_rss_mb:.0f} "
        f"| {one_off:.2f} | {batch:.1f} | {model.stat().st_size / 2**20:.1f} |"
    )


def validated(name: str, size: int) -> str:
    """The validation of `name`'s chosen settings at input `size`, as a table row."""
    train = load_dataset(MVTEC / name, name).train
    config = chosen_settings(name, train)
    crop = config.preprocess.crop if config.preprocess.align is not None else size
    config = replace(config, preprocess=replace(config.preprocess, resize=size, crop=crop))
    candidate = Candidate(config.backbone, config.image_score, config.coreset)
    [trial], _ = _Validation(train, config, config.seed).run([candidate], "cpu", None, no_progress)
    return (
        f"| {name} | {size} | {trial.caught:.0%} | {trial.caught_small:.0%} | {trial.auroc:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["grid_512", "screw_512"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[384, 448, 512])
    parser.add_argument("--validation", action="store_true", help="validation figures only")
    args = parser.parse_args()
    print(f"{machine()}\n")
    if args.validation:
        print("| set | input | caught | small caught | ROC AUC against held-out good |")
        print("|---|---|---|---|---|")
        for name in args.datasets:
            for size in args.sizes:
                print(validated(name, size), flush=True)
        return
    for name in args.datasets:
        command = [PYTHON, "make_model.py", "--data-dir", MVTEC / name, *flags(name, "SIZE")]
        print(f"$ {shown(command)}")
    print(
        "\n| set | input | image ROC AUC | pixel ROC AUC | misclassified | regret "
        "| make_model s, wall / CPU | peak MB | one-off s | batch images/s | model MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.datasets:
            for size in args.sizes:
                print(measure(name, size, Path(work)), flush=True)


if __name__ == "__main__":
    main()

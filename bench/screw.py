#!/usr/bin/env python3
"""The small-defect recipes on screw_512, end to end as a user runs them: fit (wall time,
peak RSS), image ROC AUC and the automatic threshold's confusion matrix (from the results
file), a one-off call and batch scoring of the 82 test images.

    python bench/screw.py                        # every recipe, one fit each
    python bench/screw.py --recipes align768 --runs 3

Each recipe fits for minutes on two cores (whole1024 for about 25), so `make bench` leaves
this script out.
"""

from __future__ import annotations

import argparse
import json

from common import MVTEC, PYTHON, ROOT, WORK, fit_command, machine, report, run, spread

SCREW = MVTEC / "screw_512"
COMMON = ["--coreset", "0.01", "--image-score", "top10"]
RECIPES = {
    "align768": ["--align", "--image-size", "768", *COMMON],
    "align512": ["--align", "--image-size", "512", *COMMON],
    "whole512": ["--image-size", "512", "--crop", "512", *COMMON],
    "whole1024": ["--image-size", "1024", "--crop", "1024", *COMMON],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--runs", type=int, default=3, help="one-off and batch repeats")
    args = parser.parse_args(argv)
    if not (SCREW / "train" / "good").is_dir():
        raise SystemExit(f"benchmark data not found at {SCREW}")
    tests = sorted((SCREW / "test").rglob("*.png"))
    for name in args.recipes:
        model = WORK / f"screw_{name}.safetensors"
        model.parent.mkdir(parents=True, exist_ok=True)
        command = [*fit_command(SCREW, model), *RECIPES[name]]
        fitted = run(command)
        results = json.loads(model.with_suffix(".results.json").read_text())
        (tn, fp), (fn, tp) = results["confusion_matrix"]
        one_off = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, tests[0]]
        run(one_off)  # page cache
        singles = [run(one_off) for _ in range(args.runs)]
        batch = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, *tests]
        batches = [run(batch) for _ in range(args.runs)]
        report(
            f"screw_512, {name}",
            command,
            {
                "image ROC AUC": f"{results['image_rocauc']:.3f}",
                "auto threshold": (
                    f"{results['threshold']:.4g}: {fp}/{tn + fp} good flagged, "
                    f"{fn}/{fn + tp} defective missed, F1 {results['f1']:.2f} "
                    f"(best F1 {results['best_f1']:.2f})"
                ),
                "fit": f"{fitted.seconds:.0f} s, {fitted.peak_rss_mb:.0f} MB peak RSS",
                "one-off call": spread([r.seconds for r in singles], "s"),
                "batch, 82 images": spread(
                    [len(tests) / r.seconds for r in batches], "images/s", 1
                ),
                "batch peak RSS": spread([r.peak_rss_mb for r in batches], "MB", 0),
            },
        )
    print(f"  {'machine':<22} {machine()}")


if __name__ == "__main__":
    main()

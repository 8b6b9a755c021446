#!/usr/bin/env python3
"""Fit time and peak memory: make_model.py on bottle_256 (209 images, 10% coreset).

Wall time from process start to the model file written (evaluation of the 83 test images
included, as make_model.py does it), over several runs. The last run's model is kept for
the scoring benchmarks.

    python bench/fit.py [--runs 3] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse

from common import BOTTLE, OFFLINE, WORK, fit_command, machine, model_path, report, run, spread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=OFFLINE, help=f"default: {OFFLINE}")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    command = fit_command(BOTTLE, model_path(args.backbone), args.backbone)
    runs = [run(command) for _ in range(args.runs)]
    report(
        f"fit bottle_256, {args.backbone}, 10% coreset",
        command,
        {
            "wall time": spread([r.seconds for r in runs], "s", 1),
            "peak RSS": spread([r.peak_rss_mb for r in runs], "MB", 0),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()

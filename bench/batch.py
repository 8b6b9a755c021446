#!/usr/bin/env python3
"""Batch scoring rate: one `anomaly_detector.py` call on many files, images per second from
process start to exit (start-up included).

- the 83 bottle_256 test images (256 px PNGs), listed, and as one directory argument;
- the four 900 px bottle_fullres_samples PNGs, each listed 10 times (40 images), since
  decoding and resizing large PNGs is a cost of its own.

    python bench/batch.py [--runs 5] [--backbone efficientnet_lite0 | --model FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    BOTTLE,
    FULLRES,
    OFFLINE,
    PYTHON,
    ROOT,
    ensure_model,
    machine,
    report,
    run,
    spread,
)


def measure(name: str, model: Path, inputs: list[Path], images: int, runs: int) -> None:
    command = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, *inputs]
    results = []
    for _ in range(runs):
        result = run(command)
        if len(result.stdout.splitlines()) != images:
            raise SystemExit(f"{name}: expected {images} result lines")
        results.append(result)
    shown_command = command if len(inputs) == 1 else [*command[:4], f"<{len(inputs)} files>"]
    report(
        name,
        shown_command,
        {
            "images/s": spread([images / r.seconds for r in results], "images/s", 1),
            "wall time": spread([r.seconds for r in results], "s"),
            "peak RSS": spread([r.peak_rss_mb for r in results], "MB", 0),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=OFFLINE, help=f"default: {OFFLINE}")
    parser.add_argument(
        "--model", type=Path, help="score with this model file instead (--backbone unused)"
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    model = args.model or ensure_model(args.backbone)
    bottle = sorted((BOTTLE / "test").rglob("*.png"))
    measure("batch, 83 bottle_256 test images", model, bottle, len(bottle), args.runs)
    folder = [BOTTLE / "test"]
    measure("batch, the same as one directory", model, folder, len(bottle), args.runs)
    fullres = sorted((FULLRES / "test").rglob("*.png")) * 10
    measure("batch, 900 px PNGs (4 files x 10)", model, fullres, len(fullres), args.runs)
    print(f"  {'machine':<22} {machine()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Batch scoring rate: one `anomaly_detector.py` call on many files, images per second from
process start to exit (start-up included).

- the 83 bottle_256 test images (256 px PNGs);
- the four 900 px bottle_fullres_samples PNGs, each listed 10 times (40 images), since
  decoding and resizing large PNGs is a cost of its own.

    python bench/batch.py [--runs 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import BOTTLE, FULLRES, PYTHON, ROOT, ensure_model, machine, report, run, spread


def measure(name: str, model: Path, images: list[Path], runs: int) -> None:
    command = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, *images]
    results = []
    for _ in range(runs):
        result = run(command)
        if len(result.stdout.splitlines()) != len(images):
            raise SystemExit(f"{name}: expected {len(images)} result lines")
        results.append(result)
    shown_command = [*command[:4], f"<{len(images)} files>"]
    report(
        name,
        shown_command,
        {
            "images/s": spread([len(images) / r.seconds for r in results], "images/s", 1),
            "wall time": spread([r.seconds for r in results], "s"),
            "peak RSS": spread([r.peak_rss_mb for r in results], "MB", 0),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    model = ensure_model()
    bottle = sorted((BOTTLE / "test").rglob("*.png"))
    measure("batch, 83 bottle_256 test images", model, bottle, args.runs)
    fullres = sorted((FULLRES / "test").rglob("*.png")) * 10
    measure("batch, 900 px PNGs (4 files x 10)", model, fullres, args.runs)
    print(f"  {'machine':<22} {machine()}")


if __name__ == "__main__":
    main()

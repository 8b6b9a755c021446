#!/usr/bin/env python3
"""One-off call: `anomaly_detector.py one.png` from process start to exit, as a shell loop
calls it. One untimed call first, so every timed run finds the files in the page cache.

    python bench/one_off.py [--runs 10] [--backbone efficientnet_lite0 | --model FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import BOTTLE, OFFLINE, PYTHON, ROOT, ensure_model, machine, report, run, spread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=OFFLINE, help=f"default: {OFFLINE}")
    parser.add_argument(
        "--model", type=Path, help="score with this model file instead (--backbone unused)"
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    model = args.model or ensure_model(args.backbone)
    image = BOTTLE / "test" / "broken_large" / "000.png"
    command = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, image]
    run(command)
    runs = [run(command) for _ in range(args.runs)]
    report(
        "one-off call, one 256 px PNG",
        command,
        {
            "wall time": spread([r.seconds for r in runs], "s"),
            "peak RSS": spread([r.peak_rss_mb for r in runs], "MB", 0),
            "model file": f"{model.stat().st_size / 2**20:.1f} MiB ({model.name})",
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()

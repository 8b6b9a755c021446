#!/usr/bin/env python3
"""The offline backbones side by side on bottle_256: one-off call, batch rate, model size.

Each backbone's model is fitted once with make_model.py's defaults (kept in BENCH_DIR).
The calls then take turns, one backbone after the other in every round, so that whatever
else runs on the machine weighs on each backbone alike; medians over the rounds, with the
CPU seconds (user + system) the calls used beside the wall times.

    python bench/backbones.py [--rounds 5] [--backbones efficientnet_lite0 efficientnet_lite2]
"""

from __future__ import annotations

import argparse
import statistics

from common import BOTTLE, PYTHON, ROOT, ensure_model, machine, report, run, spread

OFFLINE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbones", nargs="+", default=list(OFFLINE))
    args = parser.parse_args(argv)
    models = {backbone: ensure_model(backbone) for backbone in args.backbones}
    image = BOTTLE / "test" / "broken_large" / "000.png"
    batch = sorted((BOTTLE / "test").rglob("*.png"))
    one_off = {
        b: [PYTHON, ROOT / "anomaly_detector.py", "--model", m, image] for b, m in models.items()
    }
    many = {
        b: [PYTHON, ROOT / "anomaly_detector.py", "--model", m, *batch] for b, m in models.items()
    }
    for commands in (one_off, many):
        for command in commands.values():
            run(command)  # files into the page cache
    single: dict[str, list] = {b: [] for b in models}
    batched: dict[str, list] = {b: [] for b in models}
    for _ in range(args.rounds):
        for backbone in models:
            single[backbone].append(run(one_off[backbone]))
            result = run(many[backbone])
            if len(result.stdout.splitlines()) != len(batch):
                raise SystemExit(f"{backbone}: expected {len(batch)} result lines")
            batched[backbone].append(result)
    for backbone, model in models.items():
        calls, batches = single[backbone], batched[backbone]
        report(
            f"{backbone}: one-off call and batch of {len(batch)} bottle_256 test images",
            [*one_off[backbone][:4], "<one image | 83 files>"],
            {
                "one-off wall": spread([r.seconds for r in calls], "s"),
                "one-off CPU": spread([r.cpu_seconds for r in calls], "s"),
                "batch images/s": spread([len(batch) / r.seconds for r in batches], "images/s", 1),
                "batch CPU": spread([r.cpu_seconds for r in batches], "s"),
                "batch peak RSS": f"{statistics.median(r.peak_rss_mb for r in batches):.0f} MB",
                "model file": f"{model.stat().st_size / 2**20:.1f} MiB",
            },
        )
    print(f"  {'machine':<22} {machine()}")


if __name__ == "__main__":
    main()

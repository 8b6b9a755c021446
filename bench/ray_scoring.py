#!/usr/bin/env python3
"""Scoring on Ray against the command's batch mode on the same machine: images per second
with 1 and 2 scorers on a local Ray cluster, and the command scoring the same images in
one call, each from its start (loading the model included), with the cores the machine
kept busy meanwhile (run it on a quiet machine). Checks on the way that Ray's
records are the command's, byte for byte.

    python bench/ray_scoring.py [--repeat 4] [--model FILE]

The images are bottle_256's test set, `--repeat` times over; the model by default is the
scoring benchmarks' (common.ensure_model).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ray
from common import BOTTLE, PYTHON, ROOT, ensure_model, machine, report, run

from ind_knn_ad.runtime.ray_scoring import score_dataset


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat): Ray's own
    processes and a scorer's decoding threads count, which a scorer's one CPU does not."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--model", type=Path, help="default: the scoring benchmarks' model")
    args = parser.parse_args(argv)
    model = args.model or ensure_model()
    images = sorted(str(path) for path in (BOTTLE / "test").rglob("*.png")) * args.repeat
    command = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, "--device", "cpu"]
    cli = run([*command, *images])
    figures = {"command, one call": f"{len(images) / cli.seconds:.1f} images/s"}
    # A CPU per scorer and one for Ray Data's own tasks, on the machine's 2 cores.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    paths = ray.data.from_items([{"path": image} for image in images])
    for workers in (1, 2):
        start, busy = time.perf_counter(), busy_seconds()
        rows = score_dataset(paths, model, workers=workers).take_all()
        seconds = time.perf_counter() - start
        cores = (busy_seconds() - busy) / seconds
        same = "".join(row["record"] for row in rows) == cli.stdout
        figures[f"Ray, {workers} worker(s)"] = (
            f"{len(images) / seconds:.1f} images/s, {cores:.2f} cores busy "
            f"(records {'identical' if same else 'DIFFER'})"
        )
    ray.shutdown()
    figures["machine"] = machine()
    report(f"Ray scoring of {len(images)} images", [*command, "<images>"], figures)


if __name__ == "__main__":
    main()

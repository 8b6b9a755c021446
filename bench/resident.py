#!/usr/bin/env python3
"""Calls per image: a one-off call against a resident one (`--resident`), a `find -exec`
loop of each over the bottle_256 test images, and one batch call over all of them, each
from process start to exit. The resident scorer runs in a private runtime folder of its
own, started by an untimed first call, and is stopped at the end.

    python bench/resident.py [--runs 20] [--rounds 3] [--model FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
from pathlib import Path

from common import BOTTLE, PYTHON, ROOT, ensure_model, machine, report, run, spread


def timed(command: list[str | Path], runs: int) -> str:
    """Wall seconds of `runs` runs, and the CPU seconds of the process itself (a resident
    call's scoring is the scorer's, not counted there)."""
    results = [run(command) for _ in range(runs)]
    wall = spread([r.seconds for r in results], "s", 3)
    return f"{wall}; CPU {spread([r.cpu_seconds for r in results], 's', 3)}"


def find_loop(model: Path, rounds: int) -> float:
    """Seconds per call of `find bottle_256/test -name '*.png' -exec ... {} ;`."""
    command = ["find", BOTTLE / "test", "-name", "*.png", "-exec"]
    command += [PYTHON, ROOT / "anomaly_detector.py", "--model", model, "{}", ";"]
    calls = len(list((BOTTLE / "test").rglob("*.png")))
    seconds = [run(command).seconds / calls for _ in range(rounds)]
    return min(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: the bottle_256 model of common.py")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="find loops of each kind")
    args = parser.parse_args(argv)
    model = args.model or ensure_model()
    image = BOTTLE / "test" / "broken_large" / "000.png"
    call = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, image]
    runtime = Path(tempfile.mkdtemp())
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        figures = {"python -c pass": timed([PYTHON, "-c", "pass"], args.runs)}
        run(call)
        figures["one-off call"] = timed(call, args.runs)
        run([*call, "--resident"])  # starts the scorer, loads the model
        figures["resident call"] = timed([*call, "--resident"], args.runs)
        plain_loop = find_loop(model, args.rounds)
        os.environ["ANOMALY_DETECTOR_RESIDENT"] = "1"
        resident_loop = find_loop(model, args.rounds)
        figures["find -exec, per call"] = (
            f"{plain_loop:.3f} s plain, {resident_loop:.3f} s resident "
            f"({plain_loop / resident_loop:.1f}x; best of {args.rounds} loops of 83 calls)"
        )
        images = sorted((BOTTLE / "test").rglob("*.png"))
        for name in ("plain", "resident"):
            os.environ["ANOMALY_DETECTOR_RESIDENT"] = "1" if name == "resident" else "0"
            batch = [len(images) / run([*call[:-1], *images]).seconds for _ in range(3)]
            figures[f"batch of 83, {name}"] = spread(batch, "images/s", 1)
        figures["machine"] = machine()
        report("calls per image, bottle_256", call, figures)
    finally:
        stop(runtime)


def stop(runtime: Path) -> None:
    """End the scorer this script started (its pid is in its lock file)."""
    for lock in runtime.glob("ind_knn_ad/scorer-*.lock"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


if __name__ == "__main__":
    main()

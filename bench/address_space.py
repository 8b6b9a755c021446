#!/usr/bin/env python3
"""A fit's address space against `limits.FIT_ADDRESS_SPACE` + `FIT_ADDRESS_PER_PIXEL` x pixels,
the estimate by which a fit under an address-space limit (ulimit -v, prlimit --as) is
refused before it starts, and which `tests/test_memory_bounds.py` fits under exactly.

Each fit runs `make_model.py` unconstrained and prints its VmPeak (every mapping at its
largest) and VmHWM (resident) at exit, for the fits the estimate was set on: the sample set
at 96 px with its test set (the test's fit), and 10 of its training images at 224 and
512 px. With --coretypes, each again with OPENBLAS_CORETYPE forced, as another CPU's
kernels would run. The margin is the estimate minus VmPeak; it should stay above
`patchcore.memory.ADDRESS_SLACK`.

    python bench/address_space.py [--coretypes Haswell SkylakeX Zen Prescott]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import PYTHON, machine, run

from ind_knn_ad.io.limits import FIT_ADDRESS_PER_PIXEL, FIT_ADDRESS_SPACE
from ind_knn_ad.io.sample_data import generate_sample_dataset
from ind_knn_ad.methods.patchcore.memory import ADDRESS_SLACK

# make_model.py run as its script, reporting its own peaks when it exits.
PEAKS = """
import atexit, runpy, sys
def peaks():
    for line in open("/proc/self/status"):
        if line.startswith(("VmPeak", "VmHWM")):
            print(line.split()[0], int(line.split()[1]) * 1024, file=sys.stderr)
atexit.register(peaks)
sys.argv = ["make_model.py", *sys.argv[1:]]
runpy.run_path("make_model.py", run_name="__main__")
"""
FIT = ["--settings", "fixed", "--backbone", "efficientnet_lite0", "--device", "cpu"]


def peaks(data: Path, size: int, options: list[str], coretype: str | None, work: Path) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        environment["OPENBLAS_CORETYPE"] = coretype
    model = work / "m.safetensors"
    command = [PYTHON, "-c", PEAKS, "--data-dir", data, *FIT, "--model", model, "--force"]
    command += ["--image-size", str(size), "--crop", str(size), *options]
    done = run(command, env=environment)
    found = dict(line.split()[:2] for line in done.stderr.splitlines() if line.startswith("Vm"))
    peak, resident = int(found["VmPeak:"]), int(found["VmHWM:"])
    estimate = FIT_ADDRESS_SPACE + FIT_ADDRESS_PER_PIXEL * size * size
    return (
        f"| {data.name} | {size} | {coretype or 'default'} | {peak / 1e9:.3f} "
        f"| {resident / 1e9:.2f} | {estimate / 1e9:.3f} | {(estimate - peak) / 1e6:+.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coretypes", nargs="*", default=[], help="OPENBLAS_CORETYPE values")
    args = parser.parse_args()
    print(f"{machine()}; margin wanted: above {ADDRESS_SLACK / 1e6:.0f} MB\n")
    print("| data | px | OPENBLAS_CORETYPE | VmPeak GB | VmHWM GB | estimate GB | margin MB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        sample = generate_sample_dataset(work / "data")
        ten = work / "ten_images"
        (ten / "train" / "good").mkdir(parents=True)
        for image in sorted((sample / "train" / "good").glob("*.png"))[:10]:
            shutil.copy(image, ten / "train" / "good")
        fits = [
            (sample, 96, ["--threshold", "1"]),
            (ten, 224, ["--image-score", "max", "--coreset", "0.1"]),
            (ten, 512, ["--image-score", "max", "--coreset", "0.1"]),
        ]
        for coretype in [None, *args.coretypes]:
            for data, size, options in fits:
                print(peaks(data, size, options, coretype, work), flush=True)


if __name__ == "__main__":
    main()

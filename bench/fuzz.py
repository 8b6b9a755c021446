#!/usr/bin/env python3
"""Long runs of the two fuzz targets (tests/fuzzing.py): mutated model files must give the
original's score exactly or be refused (exit 3); mutated images must load as RGB or be
refused (exit 1); neither may raise anything else or add more than 300 MB to peak memory.
The test suite runs a few hundred seeded cases of each; this runs as many as asked.

    python bench/fuzz.py [--model-cases 3000] [--image-cases 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The fuzz targets are shared with the test suite, which keeps them in tests/.
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import (  # noqa: E402
    check_image_case,
    check_model_case,
    image_seeds,
    mutate_image,
    score_model,
)

from ind_knn_ad.io.preprocess import Preprocess  # noqa: E402
from ind_knn_ad.io.sample_data import generate_sample_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-cases", type=int, default=3000)
    parser.add_argument("--image-cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if args.model_cases:
            data = generate_sample_dataset(scratch / "data")
            model = scratch / "model.safetensors"
            subprocess.run(
                [
                    sys.executable,
                    ROOT / "make_model.py",
                    "--data-dir",
                    data,
                    "--model",
                    model,
                    "--backbone",
                    "efficientnet_lite0",
                    "--device",
                    "cpu",
                ],
                check=True,
                capture_output=True,
            )
            images = sorted((data / "test").rglob("*.png"))[:2]
            expected, original = score_model(model, images), model.read_bytes()
            failures += run(
                "model loader",
                args.model_cases,
                args.seed,
                lambda rng: check_model_case(
                    rng, original, expected, scratch / "case.safetensors", images
                ),
            )
        if args.image_cases:
            seeds, preprocess = image_seeds(), Preprocess()
            failures += run(
                "image loader",
                args.image_cases,
                args.seed,
                lambda rng: check_image_case(
                    mutate_image(rng, seeds), scratch / "case.img", preprocess
                ),
            )
    return 1 if failures else 0


def run(name: str, cases: int, seed: int, case) -> int:
    """`cases` cases from one seeded generator; prints the outcomes and each failure."""
    rng, outcomes, failures = random.Random(seed), Counter(), 0
    start = time.perf_counter()
    for index in range(cases):
        try:
            outcomes[case(rng)] += 1
        except Exception as error:  # a broken contract: report it and go on
            failures += 1
            print(f"{name} case {index} (seed {seed}): {type(error).__name__}: {error}")
    seconds = time.perf_counter() - start
    print(f"{name}: {cases} cases in {seconds:.0f} s, {failures} failures")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome}: {count}")
    return failures


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Every speed benchmark in turn (`make bench`): fit, one-off call, batch scoring, and the
nearest-neighbour search alone.

The scale check (a 2,000-image fit, several minutes) runs only with --scale. Each figure is
printed under the command that produced it; medians come with min, max and run counts.

    python bench/run_all.py [--scale] [--quick]
"""

from __future__ import annotations

import argparse

import batch
import fit
import nearest
import one_off
import scale_fit
from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="store_true", help="also fit on 2,000 images")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    fit.main(["--runs", "1" if args.quick else "3"])
    one_off.main(["--runs", "3" if args.quick else "10"])
    batch.main(["--runs", "1" if args.quick else "5"])
    nearest.main(["--runs", "1" if args.quick else "5"])
    if args.scale:
        scale_fit.main([])


if __name__ == "__main__":
    main()

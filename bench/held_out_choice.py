#!/usr/bin/env python3
"""What the automatic settings choose when their validation scores each subsample image
against a bank whose holes are filled (`patchcore.held_out`, the threshold's rule), against
a revision whose validation only removed the image's rows.

Per set, one after the other: `tuning.autosettings.choose` on train/good under the given
revision (`--before`, a worktree) and under this tree, each in its own process: the chosen
candidate, every candidate's catch rates (all defects / the small ones, ROC AUC) and the
choosing seconds. The fit is deterministic from the settings, so where the choice is the
same the threshold and the errors are too; where it differs, fit both with make_model.py.

    git worktree add --detach ../before main
    python bench/held_out_choice.py --before ../before [--datasets ...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

from common import MVTEC, PYTHON, ROOT, machine, report

import ind_knn_ad  # in a child: the revision under PYTHONPATH
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.tuning.autosettings import choose

# Shared sets with train/good (bottle_fullres_samples has none).
SETS = ("bottle_256", "hazelnut_reduced", "transistor_reduced", "screw_512", "grid_512")


def choose_here(name: str) -> None:
    """Print the choice on set `name` as JSON, with whichever ind_knn_ad is importable."""
    dataset = load_dataset(MVTEC / name, name)
    if "config" in inspect.signature(choose).parameters:  # from the one FitConfig on
        from ind_knn_ad.config import FitConfig

        record = choose(FitConfig(), dataset.train, device="cpu").to_dict()
    else:  # earlier revisions: choose(train_paths, fixed, device, ...)
        record = choose(dataset.train, device="cpu").to_dict()
    record["code"] = str(Path(ind_knn_ad.__file__).parent.parent)
    print(json.dumps(record))


def choice(tree: Path, name: str) -> dict:
    """The choice on `name` by the code of `tree`, in a fresh process."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    command = [PYTHON, Path(__file__).resolve(), "--child", name]
    done = subprocess.run(
        command, cwd=tree, env=environment, capture_output=True, text=True, check=True
    )
    record = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(record["code"]).resolve() != tree.resolve():
        sys.exit(f"{name}: imported {record['code']}, not {tree}")
    return record


def line(record: dict) -> str:
    """The chosen candidate, each candidate's figures and the seconds."""
    candidates = "; ".join(
        f"{c['name']} {c['caught']:.0%}/{c['caught_small']:.0%}/{c['auroc']:.3f}/"
        f"{c['seconds']:.1f}s"
        for c in record["candidates"]
    )
    return f"chose {record['chosen']} in {record['seconds']:.1f} s [{candidates}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a worktree of the revision to compare")
    parser.add_argument("--datasets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        choose_here(args.child)
        return
    if args.before is None:
        parser.error("--before is required")
    figures = {}
    for name in args.datasets:
        before, after = choice(args.before, name), choice(ROOT, name)
        figures[f"{name} before"] = line(before)
        figures[f"{name} after"] = line(after)
        same = before["chosen"] == after["chosen"]
        figures[f"{name} same"] = "same choice" if same else "CHOICE CHANGED: fit both"
        print(json.dumps({"set": name, "before": before, "after": after}), flush=True)
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "held_out_choice.py", "--before", args.before]
    report("automatic choice, validation without and with filled holes", command, figures)


if __name__ == "__main__":
    main()

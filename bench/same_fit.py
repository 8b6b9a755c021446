#!/usr/bin/env python3
"""Does a refactor change what a fit makes? The same make_model.py flags, run by an earlier
revision (a temporary git worktree) and by the working tree, on each given set: every
tensor compared bit for bit, the threshold, the chosen settings, and each test image's
score in the results file.

    python bench/same_fit.py --before 5db552b [--datasets hazelnut_reduced ...] [-- FLAGS]

Flags after `--` go to both fits (default: none, the automatic settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import MVTEC, PYTHON, ROOT, machine, run, shown, worktree
from safetensors.numpy import load_file


def fit(tree: Path, data: Path, model: Path, flags: list[str]) -> float:
    """Seconds of `make_model.py` from `tree` on `data`, writing `model`."""
    command = [PYTHON, tree / "make_model.py", "--data-dir", data, "--model", model]
    return run([*command, "--device", "cpu", *flags]).seconds


def settings(model: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(model), framework="numpy") as reader:
        return json.loads(reader.metadata()["ind_knn_ad"])


def compare(before: Path, after: Path) -> list[str]:
    """What differs between two model files and their results files, one line each."""
    differences = []
    old, new = load_file(str(before)), load_file(str(after))
    for name in sorted(set(old) | set(new)):
        if name == "feature_graph":  # ONNX bytes carry the exporter's names; the scores tell
            continue
        if name not in old or name not in new:
            differences.append(f"tensor {name} only in one file")
        elif old[name].shape != new[name].shape or old[name].tobytes() != new[name].tobytes():
            differences.append(f"tensor {name} differs")
    old_settings, new_settings = settings(before), settings(after)
    for key in ("threshold", "image_score", "preprocess", "backbone", "coreset", "detectability"):
        if old_settings.get(key) != new_settings.get(key):
            differences.append(f"setting {key}: {old_settings.get(key)} -> {new_settings.get(key)}")
    old_chosen = (old_settings.get("auto_settings") or {}).get("chosen")
    new_chosen = (new_settings.get("auto_settings") or {}).get("chosen")
    if old_chosen != new_chosen:
        differences.append(f"chosen {old_chosen} -> {new_chosen}")
    results = [
        json.loads(path.with_suffix(".results.json").read_text()) for path in (before, after)
    ]
    scores = [{image["file"]: image["score"] for image in r["images"]} for r in results]
    changed = [name for name in scores[0] if scores[0][name] != scores[1].get(name)]
    if changed:
        differences.append(f"{len(changed)} test scores differ, e.g. {changed[0]}")
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--datasets", nargs="+", default=["hazelnut_reduced"])
    parser.add_argument("flags", nargs="*", help="make_model.py flags for both fits")
    args = parser.parse_args()
    with worktree(args.before) as tree:
        print(f"$ python bench/same_fit.py --before {args.before} ... {shown(args.flags)}")
        print(f"  machine: {machine()}")
        print("| set | fit s before | fit s after | differences |\n|---|---|---|---|")
        for name in args.datasets:
            models = [tree.parent / f"{name}.{side}.safetensors" for side in ("old", "new")]
            seconds = [
                fit(root, MVTEC / name, model, args.flags)
                for root, model in zip((tree, ROOT), models, strict=True)
            ]
            found = "; ".join(compare(*models)) or "none"
            print(f"| {name} | {seconds[0]:.0f} | {seconds[1]:.0f} | {found} |")


if __name__ == "__main__":
    main()

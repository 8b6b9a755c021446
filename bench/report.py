#!/usr/bin/env python3
"""The sign-off page on the shared sets, checked in headless Chromium as the browser test
does: fit (or, with --reuse, evaluate a model fitted before) each set, then open its
`<model>.report.html` offline and print the page's size, its load time, what it requested
outside itself, console errors and whether its counts match results.json. Screenshots
(top of the page, then the misses and false alarms) go beside each report as PNGs.

    python bench/report.py                                  # the four sets, fitted here
    python bench/report.py --reuse /tmp/base --sets grid_512 screw_512
    python bench/report.py --sets bottle_256 --scale 1000   # also a 1,000-image page

--scale N builds a page of N test images from the first set's evaluation (its images
repeated) to measure what a large test set costs: size and load time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import MVTEC, PYTHON, ROOT, WORK, machine, run, shown

sys.path.insert(0, str(ROOT / "tests"))
from browser import Browser  # the tests' DevTools driver

SETS = ("hazelnut_reduced", "bottle_256", "screw_512", "grid_512")
READ = """({threshold: document.getElementById('threshold').innerText,
  false_alarms: document.getElementById('false-alarms').innerText,
  misses: document.getElementById('misses').innerText,
  tiles: document.querySelectorAll('.tile img').length})"""


def produce(name: str, reuse: Path | None) -> tuple[Path, str, float]:
    """The set's model and report: fitted with the automatic settings, or the model in
    `reuse` evaluated again; (model, what was run, seconds)."""
    model = WORK / "report" / f"{name}.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    command = [PYTHON, ROOT / "make_model.py", "--data-dir", MVTEC / name, "--device", "cpu"]
    if reuse is not None and (reuse / f"{name}.safetensors").is_file():
        shutil.copy(reuse / f"{name}.safetensors", model)
        command += ["--model", model, "--evaluate-only"]
    else:
        command += ["--model", model]
    done = run(command)
    return model, shown(command), done.seconds


def check(page: Path, results: dict) -> dict[str, str]:
    """Open the page offline; its figures and whether it agrees with results.json."""
    with Browser() as browser:
        loaded = browser.load(page, READ, ("#wrong",))
    for index, shot in enumerate(loaded.screenshots):
        page.with_suffix(f".shot{index}.png").write_bytes(shot)
    (_, fp), (fn, _) = results["confusion_matrix"]
    values = loaded.values
    agrees = (
        abs(float(values["threshold"]) - results["threshold"]) <= 1e-5 * results["threshold"]
        and [int(values["false_alarms"]), int(values["misses"])] == [fp, fn]
        and values["tiles"] == len(results["images"])
    )
    outside = [u for u in loaded.requests if not u.startswith("data:") and u != page.as_uri()]
    return {
        "page MB": f"{page.stat().st_size / 1e6:.2f}",
        "load ms": f"{loaded.load_ms:.0f}",
        "outside requests": str(len(outside)),
        "console errors": str(len(loaded.errors)),
        "matches results.json": "yes" if agrees else "NO",
    }


def scaled_page(model: Path, name: str, count: int) -> Path:
    """A page of `count` test images: the set's evaluation with its images repeated."""
    from ind_knn_ad.io.datasets import load_dataset
    from ind_knn_ad.report.page import fit_report
    from ind_knn_ad.report.results import evaluate_saved

    saved = evaluate_saved(model, load_dataset(MVTEC / name), "cpu", None, None, lambda m: None)
    sheet, evaluation = saved.sheet, saved.evaluation
    repeat = -(-count // len(sheet.entries))
    sheet.entries = (sheet.entries * repeat)[:count]
    sheet.images = (sheet.images * repeat)[:count]
    evaluation = replace(evaluation, images=(evaluation.images * repeat)[:count])
    start = time.perf_counter()
    page = model.with_name(f"{name}.scaled{count}.report.html")
    page.write_bytes(fit_report(saved.model, evaluation, sheet, name, "scaled"))
    print(f"  {count}-image page built in {time.perf_counter() - start:.1f} s")
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=SETS, choices=SETS)
    parser.add_argument("--reuse", type=Path, help="folder of <set>.safetensors to evaluate")
    parser.add_argument("--scale", type=int, help="also a page of this many test images")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    for name in args.sets:
        model, command, seconds = produce(name, args.reuse)
        page = model.with_name(f"{name}.report.html")
        results = json.loads(model.with_name(f"{name}.results.json").read_text())
        print(f"\n== {name}\n$ {command}\n  {'run s':<22} {seconds:.0f}")
        for key, value in check(page, results).items():
            print(f"  {key:<22} {value}")
    if args.scale:
        name = args.sets[0]
        page = scaled_page(WORK / "report" / f"{name}.safetensors", name, args.scale)
        with Browser() as browser:
            loaded = browser.load(page, "document.querySelectorAll('.tile img').length")
        print(
            f"  {args.scale}-image page: {page.stat().st_size / 1e6:.2f} MB, "
            f"{loaded.values} tiles, loaded in {loaded.load_ms:.0f} ms, "
            f"{len(loaded.errors)} console errors"
        )


if __name__ == "__main__":
    main()

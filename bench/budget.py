#!/usr/bin/env python3
"""The fit budget: a default fit of 300 photos of 1024 px should take at most 10 minutes
and 6 GB on 2 cores. Fits a folder of 300 such photos (grid_512 train/good in flips and
turns, upscaled to 1024 px) with the settings the automatic choice makes for small defects
(512 px full frame, 1% coreset) and with no flag, reporting wall and CPU seconds, peak RSS
and the seconds each progress bar shows.

The folder is built once under the benchmark directory and reused. With --before REV the
same fits also run under that revision (a temporary git worktree), before this tree's.

    python bench/budget.py [--before REV] [--fits 512 default] [--test-images 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from common import MVTEC, PYTHON, ROOT, WORK, machine, report, run, worktree
from PIL import Image

GRID = MVTEC / "grid_512"
SIDE = 1024
IMAGES = 300
Variant = Callable[[Image.Image], Image.Image]
# Each source image once per variant in turn: 132 sources give 300 images in 3 variants.
VARIANTS: list[Variant] = [
    lambda image: image,
    *(lambda image, t=t: image.transpose(t) for t in Image.Transpose),
]
# The configuration the automatic settings pick for small defects on such photos; the
# second fit passes no flag at all.
FITS = {
    "512": [
        "--image-size",
        "512",
        "--crop",
        "512",
        "--coreset",
        "0.01",
        "--backbone",
        "efficientnet_lite0",
        "--image-score",
        "max",
    ],
    "default": [],
}
# A finished bar on stderr: "Coreset selection  ━━━━ 12288/12288 0:02:50 0:00:00".
BAR = re.compile(r"^(\S.*?)\s+\S*━\S*\s+(\d+)/(\d+)\s+(\d+):(\d\d):(\d\d)")


def upscaled(source: Path, variant: Variant) -> Image.Image:
    with Image.open(source) as image:
        return variant(image).resize((SIDE, SIDE), Image.BICUBIC)


def build(folder: Path, test_images: int) -> Path:
    """train/good: IMAGES photos; test/: the first `test_images` of each grid_512 test
    folder, with their masks, upscaled alike (nearest for masks)."""
    train = folder / "train" / "good"
    if len(list(train.glob("*.png"))) != IMAGES:
        train.mkdir(parents=True, exist_ok=True)
        sources = sorted((GRID / "train" / "good").glob("*.png"))
        for index in range(IMAGES):
            variant, source = divmod(index, len(sources))
            made = upscaled(sources[source], VARIANTS[variant % len(VARIANTS)])
            made.save(train / f"{index:04d}.png", compress_level=1)
    shutil.rmtree(folder / "test", ignore_errors=True)
    shutil.rmtree(folder / "ground_truth", ignore_errors=True)
    for kind in sorted((GRID / "test").iterdir()) if test_images else []:
        for source in sorted(kind.glob("*.png"))[:test_images]:
            target = folder / "test" / kind.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            upscaled(source, VARIANTS[0]).save(target)
            mask = GRID / "ground_truth" / kind.name / f"{source.stem}_mask.png"
            if mask.is_file():
                saved = folder / "ground_truth" / kind.name / mask.name
                saved.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(mask) as image:
                    image.resize((SIDE, SIDE), Image.NEAREST).save(saved)
    return folder


def stages(stderr: str) -> str:
    """Seconds of each finished progress bar, as the CLI printed them."""
    found = []
    for line in stderr.splitlines():
        match = BAR.match(line.strip())
        if match:
            name, hours, minutes, seconds = match[1], *map(int, match.groups()[3:])
            found.append(f"{name} {hours * 3600 + minutes * 60 + seconds} s")
    return "; ".join(found) or "?"


def fit(code: Path, folder: Path, name: str, label: str) -> None:
    model = WORK / f"budget_{name}_{'after' if code == ROOT else 'before'}.safetensors"
    # make_model.py's command, with a stack sampler for the stages' seconds (fit_stages.py).
    command = ["env", f"PYTHONPATH={code}", PYTHON, ROOT / "bench" / "fit_stages.py"]
    command += ["--data-dir"]
    command += [folder, "--model", model, "--device", "cpu", *FITS[name]]
    command += ["--force"] if code == ROOT else []  # earlier code replaces it unasked
    result = run(command)
    output = (result.stdout + result.stderr).splitlines()
    bank = [line.split(";")[0] for line in output if line.startswith("Memory bank")]
    sampled = [line for line in output if line.startswith("Stages (sampled")]
    report(
        f"budget fit, {name} ({label})",
        command,
        {
            "wall time": f"{result.seconds:.0f} s",
            "CPU time": f"{result.cpu_seconds:.0f} s",
            "peak RSS": f"{result.peak_rss_mb:.0f} MB",
            "progress bars": stages(result.stderr),
            "stages": sampled[-1].split(": ", 1)[1] if sampled else "?",
            "bank": bank[0] if bank else "?",
            "machine": machine(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision to fit with first")
    parser.add_argument("--fits", nargs="+", choices=list(FITS), default=list(FITS))
    parser.add_argument("--test-images", type=int, default=0, help="per test folder")
    args = parser.parse_args(argv)
    folder = build(WORK / f"budget_{IMAGES}x{SIDE}", args.test_images)
    print(f"machine: {machine()}", flush=True)
    if args.before is None:
        for name in args.fits:
            fit(ROOT, folder, name, "this tree")
        return
    with worktree(args.before) as tree:
        for name in args.fits:
            fit(tree, folder, name, args.before)
            fit(ROOT, folder, name, "this tree")


if __name__ == "__main__":
    main()

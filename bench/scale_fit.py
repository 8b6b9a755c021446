#!/usr/bin/env python3
"""Scale check: fit on 2,000 training images (bottle_256 train/good in flips, rotations and
crops), reporting wall time and peak RSS. Takes several minutes; `run_all.py --scale`.

The training folder is built once under the benchmark directory and reused.

    python bench/scale_fit.py [--images 2000]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common import BOTTLE, WORK, fit_command, machine, report, run, spread
from PIL import Image

Variant = Callable[[Image.Image], Image.Image]


def _crop(fraction: float, anchor: tuple[float, float]) -> Variant:
    """A crop of `fraction` of each side at `anchor` (0..1), resized back to full size."""

    def apply(image: Image.Image) -> Image.Image:
        width, height = image.size
        w, h = round(width * fraction), round(height * fraction)
        left, top = round((width - w) * anchor[0]), round((height - h) * anchor[1])
        return image.crop((left, top, left + w, top + h)).resize(image.size, Image.BICUBIC)

    return apply


VARIANTS: list[Variant] = [
    lambda image: image,
    *(lambda image, t=t: image.transpose(t) for t in Image.Transpose),
    *(_crop(0.85, anchor) for anchor in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))),
]


def build(
    folder: Path,
    count: int,
    change: Callable[[Image.Image, int], Image.Image] | None = None,
) -> Path:
    """`count` images made from the bottle_256 training images, each variant in turn, and
    then passed with their index through `change` when given (stream_fit.py's jitter)."""
    if len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((BOTTLE / "train" / "good").glob("*.png"))
    for index in range(count):
        variant, source = divmod(index, len(sources))
        with Image.open(sources[source]) as image:
            made = VARIANTS[variant % len(VARIANTS)](image.convert("RGB"))
        if change is not None:
            made = change(made, index)
        made.save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args(argv)
    folder = build(WORK / f"scale_{args.images}", args.images)
    command = fit_command(folder, WORK / f"scale_{args.images}.safetensors")
    result = run(command)
    output = (result.stdout + result.stderr).splitlines()
    bank = [line for line in output if line.startswith("Memory bank")]
    report(
        f"scale check: fit on {args.images} images",
        command,
        {
            "wall time": spread([result.seconds], "s", 0),
            "peak RSS": spread([result.peak_rss_mb], "MB", 0),
            "bank": bank[0] if bank else "?",
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()

"""What a model can see, from good images alone: synthetic defects of each kind and size on
held-out training images, and the share of them caught at the stored threshold.

A user with only good images learns from it, for example, that 2 px scratches pass and
20 px ones are caught. The damaged images are scored as new images would be, against a
model without the image they came from (the held-out rule of the threshold), so a defect
is not hidden by the image's own patches in the bank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .images import load_image
from .preprocess import Preprocess
from .synthetic import DEFECTS

# Training images damaged, at most; each gets every kind at every size. Few, because each
# damaged image costs a feature extraction: the fit grows by about a third (bench/fit.py).
IMAGES = 6
# Defect sizes as fractions of the network input's shorter side (224 px: 9, 22 and 45 px).
SIZES = (0.04, 0.1, 0.2)

# (features of damaged images, their (B, H, W, 3) uint8 cuts, the training image they came
# from) -> their scores against a model without that image.
HeldOutScorer = Callable[[np.ndarray, np.ndarray, int], list[float]]
Extractor = Callable[[np.ndarray], np.ndarray]


def damaged_inputs(
    path: Path, preprocess: Preprocess, sizes: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Network inputs of one good image with each defect kind at each size (pixels of the
    input), the damaged (B, H, W, 3) uint8 cuts they were made from, and their (kind, size)
    labels. Damage is done on the cut the network sees."""
    cut = np.asarray(preprocess.geometry(load_image(path).convert("RGB")))
    arrays, cuts, labels = [], [], []
    for kind, defect in DEFECTS.items():
        for size in sizes:
            damaged, _ = defect(cut, size, rng)
            arrays.append(preprocess.normalise(damaged))
            cuts.append(damaged)
            labels.append((kind, size))
    return np.stack(arrays), np.stack(cuts), labels


def measure(
    paths: Sequence[Path],
    preprocess: Preprocess,
    extractor: Extractor,
    held_out: HeldOutScorer,
    threshold: float,
    seed: int = 0,
) -> list[dict]:
    """Per defect kind and size: how many damaged held-out images score at or above
    `threshold`, of how many. A seeded sample of at most IMAGES training images is used."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(paths), min(IMAGES, len(paths)), replace=False))
    shorter = min(preprocess.size)
    sizes = sorted({max(1, round(fraction * shorter)) for fraction in SIZES})
    caught: dict[tuple[str, int], list[bool]] = {}
    for image in chosen:
        arrays, cuts, labels = damaged_inputs(paths[image], preprocess, sizes, rng)
        scores = held_out(extractor(arrays), cuts, int(image))
        for label, score in zip(labels, scores, strict=True):
            caught.setdefault(label, []).append(score >= threshold)
    return [
        {"defect": kind, "size_px": size, "caught": int(sum(hits)), "tried": len(hits)}
        for (kind, size), hits in caught.items()
    ]

"""What a model can see, from good images alone: synthetic defects of each kind and size on
held-out training images, and the share of them caught at the stored threshold. With few
training images their scores also place that threshold (`threshold.auto_threshold`).

A user with only good images learns from it, for example, that 2 px scratches pass and
20 px ones are caught. The damaged images are scored as new images would be, against a
model without the image they came from (PatchCore: `methods.patchcore.held_out`, the rule of
the threshold's held-out images), so a defect is not hidden by the image's own patches in
the bank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ind_knn_ad.calibration.synthetic import DEFECTS
from ind_knn_ad.io.images import load_image
from ind_knn_ad.io.preprocess import Preprocess

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


@dataclass(frozen=True)
class Damaged:
    """One synthetic defect on a held-out training image, and its score."""

    kind: str
    size_px: int
    score: float


def damaged_scores(
    paths: Sequence[Path],
    preprocess: Preprocess,
    extractor: Extractor,
    held_out: HeldOutScorer,
    seed: int = 0,
) -> list[Damaged]:
    """Every defect kind at every size on a seeded sample of at most IMAGES training images,
    each scored against the model without the image it was made on."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(paths), min(IMAGES, len(paths)), replace=False))
    shorter = min(preprocess.size)
    sizes = sorted({max(1, round(fraction * shorter)) for fraction in SIZES})
    damaged = []
    for image in chosen:
        arrays, cuts, labels = damaged_inputs(paths[image], preprocess, sizes, rng)
        scores = held_out(extractor(arrays), cuts, int(image))
        damaged += [Damaged(k, size, s) for (k, size), s in zip(labels, scores, strict=True)]
    return damaged


def caught(damaged: Sequence[Damaged], threshold: float) -> list[dict]:
    """Per defect kind and size: how many score at or above `threshold`, of how many."""
    hits: dict[tuple[str, int], list[bool]] = {}
    for defect in damaged:
        hits.setdefault((defect.kind, defect.size_px), []).append(defect.score >= threshold)
    return [
        {"defect": kind, "size_px": size, "caught": int(sum(found)), "tried": len(found)}
        for (kind, size), found in hits.items()
    ]

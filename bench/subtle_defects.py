"""Subtle synthetic defect kinds, measured before any joins the library's DEFECTS.

The library's kinds (`calibration/synthetic.py`) are strong: a patch from elsewhere, a
far colour, a line at 80% contrast. Real defects on printed or coloured parts are often
faint: a colour a few levels off, a hairline crack, an imprint out of register. These
kinds are those, in the library's signature, for `bench/validation_real.py --subtle` to
rank against real defects; a kind moves into the library only where it predicts better.
"""

from __future__ import annotations

import numpy as np

from ind_knn_ad.calibration.synthetic import Pair, _blend, _centre, _changed, _ellipse


def _soft(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The region's opacity, fading to half at its rim (a 3 x 3 box blur, twice)."""
    alpha = region.astype(np.float64)
    for _ in range(2):
        padded = np.pad(alpha, 1, mode="edge")
        alpha = (
            sum(
                padded[dy : dy + alpha.shape[0], dx : dx + alpha.shape[1]]
                for dy in range(3)
                for dx in range(3)
            )
            / 9.0
        )
    return alpha * rng.uniform(0.8, 1.0)


def colour_shift(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A discoloured spot: each channel scaled by 8 to 15% up or down, soft-edged."""
    region = _ellipse(image, size, rng)
    gains = 1.0 + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.08, 0.15, 3)
    shifted = np.clip(image * gains, 0, 255)
    damaged = _blend(image, shifted, _soft(region, rng))
    return damaged, (damaged != image).any(axis=2)  # the soft rim reaches past the region


def crack(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A hairline crack: a one-pixel path wandering from a point for 1.5 x `size`
    pixels, darkened by a third."""
    height, width = image.shape[:2]
    y, x = (float(v) for v in _centre(image, size, rng))
    heading = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((height, width), bool)
    for _ in range(max(2, int(1.5 * size))):
        mask[int(np.clip(round(y), 0, height - 1)), int(np.clip(round(x), 0, width - 1))] = True
        heading += rng.normal(0, 0.35)
        y, x = y + np.sin(heading), x + np.cos(heading)
    damaged = _blend(image, np.zeros(image.shape), np.where(mask, 0.33, 0.0))
    return damaged, _changed(image, damaged, mask)


def misprint(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """Print out of register: inside an ellipse, the surface's own content shifted by 2 to
    4 pixels (on a plain surface this changes nothing, as a misprint there would not)."""
    region = _ellipse(image, size, rng)
    shift = tuple(int(v) for v in rng.integers(2, 5, 2) * rng.choice([-1, 1], 2))
    moved = np.roll(image, shift, axis=(0, 1))
    damaged = np.where(region[..., None], moved, image)
    return damaged, _changed(image, damaged, region)


SUBTLE = {"colour_shift": colour_shift, "crack": crack, "misprint": misprint}

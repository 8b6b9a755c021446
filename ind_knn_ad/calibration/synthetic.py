"""Synthetic defects made from good images, for when a user has no defective ones.

Each kind is a function of a good image (H, W, 3 uint8), a size in pixels and a NumPy
Generator: it returns the damaged image and the boolean mask of the pixels it changed, so
a caller can ask "is a defect of this kind and size caught?" from good images alone. The
kinds follow what inspection sets show: foreign material (a patch cut from elsewhere),
stains with a texture of their own (noise-shaped blends), scratches, colour blotches and
missing material (a region filled with the background).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Pair = tuple[np.ndarray, np.ndarray]
Defect = Callable[[np.ndarray, int, np.random.Generator], Pair]


def _background(image: np.ndarray) -> np.ndarray:
    """The median colour of the image's border: the background, on a part photographed on
    a plain one."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border, axis=0)


def _centre(image: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random (y, x) on the part where one stands out from the background (else anywhere),
    at least size / 2, and a sixteenth of the frame, from the frame's edges."""
    height, width = image.shape[:2]
    allowed = np.zeros((height, width), bool)
    top = min(max(size // 2, height // 16), (height - 1) // 2)
    left = min(max(size // 2, width // 16), (width - 1) // 2)
    allowed[top : height - top, left : width - left] = True
    contrast = np.abs(image.astype(np.float64) - _background(image)).sum(axis=2)
    part = allowed & (contrast > 60)
    if part.sum() >= max(16, size * size):
        allowed = part
    candidates = np.flatnonzero(allowed)
    y, x = divmod(int(candidates[rng.integers(len(candidates))]), width)
    return y, x


def _ellipse(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A randomly turned ellipse of diameter about `size` (and at least one pixel)."""
    height, width = image.shape[:2]
    y, x = _centre(image, size, rng)
    a = max(size / 2, 0.5)
    b = max(a * rng.uniform(0.4, 1.0), 0.5)
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[:height, :width]
    u = (cols - x) * np.cos(angle) + (rows - y) * np.sin(angle)
    v = -(cols - x) * np.sin(angle) + (rows - y) * np.cos(angle)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    mask[y, x] = True
    return mask


def _blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """image * (1 - alpha) + other * alpha, per pixel, back to uint8."""
    mixed = image * (1.0 - alpha[..., None]) + other * alpha[..., None]
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _changed(image: np.ndarray, damaged: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The pixels of `region` that really changed (a blend can leave some equal)."""
    return region & (damaged != image).any(axis=2)


def smooth_noise(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in [0, 1] that varies smoothly over about `cell` pixels: random values on a
    coarse grid, bilinearly interpolated with a smoothstep (value noise, one octave)."""
    height, width = shape
    cell = max(1, cell)
    grid = rng.random((height // cell + 2, width // cell + 2))
    ys, xs = np.arange(height) / cell, np.arange(width) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def cut_paste(
    image: np.ndarray, size: int, rng: np.random.Generator, donor: np.ndarray | None = None
) -> Pair:
    """A region of `donor` (another good image, or this one elsewhere) pasted in an ellipse:
    material where it does not belong."""
    donor = image if donor is None else donor
    mask = _ellipse(image, size, rng)
    shift = (int(rng.integers(-size * 2, size * 2 + 1)), int(rng.integers(-size * 2, size * 2 + 1)))
    if shift == (0, 0):
        shift = (size, size)
    moved = np.roll(donor, shift, axis=(0, 1))
    damaged = np.where(mask[..., None], moved, image)
    return damaged, _changed(image, damaged, mask)


def noise_stain(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A stain of random colour whose opacity follows smooth noise inside an ellipse."""
    region = _ellipse(image, size, rng)
    texture = smooth_noise(image.shape[:2], max(2, size // 4), rng)
    alpha = np.where(region, 0.35 + 0.6 * texture, 0.0)
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    damaged = _blend(image, np.broadcast_to(colour, image.shape), alpha)
    return damaged, _changed(image, damaged, region)


def scratch(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A thin straight line of `size` pixels' length, 1-2 pixels wide, darker or lighter
    than the surface."""
    height, width = image.shape[:2]
    y, x = _centre(image, size, rng)
    angle = rng.uniform(0, np.pi)
    steps = np.linspace(-size / 2, size / 2, max(2, 2 * size))
    thickness = int(rng.integers(1, 3))
    mask = np.zeros((height, width), bool)
    for offset in range(thickness):
        rows = np.clip(np.rint(y + steps * np.sin(angle) + offset), 0, height - 1).astype(int)
        cols = np.clip(np.rint(x + steps * np.cos(angle)), 0, width - 1).astype(int)
        mask[rows, cols] = True
    mean = image[mask].mean()
    value = 255.0 if mean < 128 else 0.0
    damaged = _blend(image, np.full(image.shape, value), np.where(mask, 0.8, 0.0))
    return damaged, _changed(image, damaged, mask)


def blotch(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A soft-edged ellipse of one colour far from the surface's own."""
    region = _ellipse(image, size, rng)
    surface = image[region].mean(axis=0)
    colour = np.where(surface < 128, rng.uniform(170, 255, 3), rng.uniform(0, 85, 3))
    damaged = _blend(image, np.broadcast_to(colour, image.shape), np.where(region, 0.85, 0.0))
    return damaged, _changed(image, damaged, region)


def missing(image: np.ndarray, size: int, rng: np.random.Generator) -> Pair:
    """A region filled with the image border's median colour: material that is not there."""
    region = _ellipse(image, size, rng)
    background = np.rint(_background(image)).astype(np.uint8)
    damaged = np.where(region[..., None], background, image)
    return damaged, _changed(image, damaged, region)


DEFECTS: dict[str, Defect] = {
    "cut_paste": cut_paste,
    "noise_stain": noise_stain,
    "scratch": scratch,
    "blotch": blotch,
    "missing": missing,
}

"""Part alignment: find the part on a plain background and cut it out in one fixed pose.

Parts such as screws lie anywhere in the frame, at any angle. Turning each to the same pose
(long axis horizontal, the heavier end on the left) and cutting a box around it spends the
backbone's pixels on the part rather than on the background: on screw_512 the box holds
the screw in about a third of the pixels of the whole frame, at the same detail.

The part is found on a small grey copy of the image: Otsu's threshold splits it from the
background (whichever side of the threshold the image border falls on), and the largest
connected region is kept, so dust and shadows do not move it. Its second moments give the
long axis; the sign of the third moment along that axis picks which end goes left.

NumPy, SciPy and Pillow only: scoring imports this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ind_knn_ad.io.images import load_image

POSE_SIDE = 128  # the part is found on a copy this small across its shorter side
POSE_LONGEST = 16 * POSE_SIDE  # and at most this long (thin images: shorter across)
# Above this many pixels, the grey copy is made from a box-reduced one of at most this many
# (`_grey`): a grey copy of an 8192x8192 image would take 64 MB, and the RGB copy and array
# the search once made took 640 MB more.
POSE_PIXELS = 1 << 22
EDGE_PIXELS = 1 << 16  # the background colour is the median of at most this many per edge
MARGIN = 0.1  # the box is this much longer and wider than the largest training part


@dataclass(frozen=True)
class Box:
    """The cut around a part, as fractions of the image's shorter side: `length` along the
    part's long axis, `breadth` across it. Measured on the training images, then fixed."""

    length: float
    breadth: float

    def __post_init__(self) -> None:
        if not (0 < self.length <= 4 and 0 < self.breadth <= 4):
            raise ValueError(f"align box {self.length} x {self.breadth} is not in (0, 4]")


@dataclass(frozen=True)
class Pose:
    """Where a part lies: the centre of its extent (pixels), the angle of its long axis
    (radians, from the x axis, y down), its length and breadth (fractions of the shorter
    side; 0 when no part was found) and the background colour, to fill beyond the frame."""

    centre: tuple[float, float]
    angle: float
    length: float
    breadth: float
    background: tuple[int, int, int]


def otsu_threshold(grey: np.ndarray) -> int:
    """The grey level that best splits a uint8 image into two classes (Otsu, 1979)."""
    counts = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(counts) / counts.sum()
    mean = np.cumsum(counts * np.arange(256)) / counts.sum()
    between = (mean[-1] * weight - mean) ** 2 / np.maximum(weight * (1.0 - weight), 1e-12)
    return int(np.argmax(between))


def foreground(grey: np.ndarray) -> np.ndarray:
    """The pixels on the other side of Otsu's threshold from the image border."""
    threshold = otsu_threshold(grey)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return grey <= threshold if np.median(border) > threshold else grey > threshold


def _part_mask(grey: np.ndarray) -> np.ndarray:
    """The largest connected region of the foreground: dust and shadows are dropped."""
    from scipy import ndimage

    mask = foreground(grey)
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _grey(image: Image.Image) -> Image.Image:
    """A grey copy of the image to find the part on: the whole image's, or above
    POSE_PIXELS one of a box-reduced copy, as small as the pose search's copy allows."""
    width, height = image.size
    if width * height <= POSE_PIXELS:
        return image.convert("L")  # exactly as before: every pose stays as it was
    factor = math.ceil(math.sqrt(width * height / POSE_PIXELS))
    across = max(1, min(factor, width // POSE_SIDE))  # no thinner than the small copy
    down = max(1, min(math.ceil(width * height / POSE_PIXELS / across), height // POSE_SIDE))
    across = max(1, min(math.ceil(width * height / POSE_PIXELS / down), width // POSE_SIDE))
    return image.reduce((across, down)).convert("L")


def _edge_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """(N, 3) RGB pixels of one edge of the image (a one-pixel row or column): all of
    them, or on an edge longer than EDGE_PIXELS (a thin image's, where the edge is the
    whole image) every k-th, read a chunk at a time."""
    left, top, right, bottom = box
    length = max(right - left, bottom - top)
    step = -(-length // EDGE_PIXELS)
    if step == 1:
        return np.asarray(image.crop(box).convert("RGB")).reshape(-1, 3)
    chunks = []
    for start in range(0, length, step * 4096):
        end = min(length, start + step * 4096)
        part = (
            (left + start, top, left + end, bottom)
            if bottom - top == 1
            else (left, top + start, right, top + end)
        )
        chunks.append(np.asarray(image.crop(part).convert("RGB")).reshape(-1, 3)[::step])
    return np.concatenate(chunks)


def find_pose(image: Image.Image) -> Pose:
    """The pose of the part in an RGB image; a frame with no part (all one colour, or the
    "part" filling it) gets the frame's centre, angle 0 and zero extent."""
    width, height = image.size
    short = min(width, height)
    scale = POSE_SIDE / short
    side = POSE_SIDE  # the small copy's pixels per shorter side of the image
    if max(width, height) * scale > POSE_LONGEST:
        # A thin image (10000x2) at 128 px across would be gigabytes long: cap its length.
        scale = POSE_LONGEST / max(width, height)
        side = short * scale
    grey = np.asarray(
        _grey(image).resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
        )
    )
    edges = [(0, 0, width, 1), (0, height - 1, width, height), (0, 0, 1, height)]
    edges.append((width - 1, 0, width, height))  # rows, then columns, as NumPy slices them
    edge = np.concatenate([_edge_pixels(image, box) for box in edges])
    background = tuple(int(v) for v in np.median(edge, axis=0))
    mask = _part_mask(grey)
    ys, xs = np.nonzero(mask)
    if len(xs) < 2 or len(xs) == mask.size:
        return Pose((width / 2, height / 2), 0.0, 0.0, 0.0, background)
    # Pixel centres, in the small copy's units.
    xs = xs + 0.5
    ys = ys + 0.5
    cx, cy = xs.mean(), ys.mean()
    dx, dy = xs - cx, ys - cy
    _, vectors = np.linalg.eigh(np.cov(np.stack([dx, dy])))
    axis_x, axis_y = vectors[:, 1]  # the eigenvector of the larger eigenvalue
    along = dx * axis_x + dy * axis_y
    if np.mean(along**3) < 0:  # the long tail goes right, the heavy end left
        axis_x, axis_y, along = -axis_x, -axis_y, -along
    across = dy * axis_x - dx * axis_y
    middle = (along.min() + along.max()) / 2
    centre = (float(cx + middle * axis_x) / scale, float(cy + middle * axis_y) / scale)
    length = (along.max() - along.min() + 1.0) / side
    breadth = 2.0 * (np.abs(across).max() + 0.5) / side
    return Pose(centre, math.atan2(axis_y, axis_x), float(length), float(breadth), background)


def output_size(box: Box, resize: int) -> tuple[int, int]:
    """(width, height) in pixels of a box cut at `resize` pixels per shorter side."""
    return max(1, round(box.length * resize)), max(1, round(box.breadth * resize))


def cut(
    image: Image.Image, pose: Pose, box: Box, resize: int, resample: Image.Resampling
) -> Image.Image:
    """The box around the part, turned so the part's long axis runs left to right, at
    `resize` pixels per shorter side of the image. Beyond the frame: the background colour
    (black for masks, which have no colour)."""
    out_width, out_height = output_size(box, resize)
    step = min(image.size) / resize  # source pixels per output pixel
    cos, sin = math.cos(pose.angle), math.sin(pose.angle)
    cx, cy = pose.centre
    half_width, half_height = out_width / 2, out_height / 2
    # Output pixel (i, j) samples source (x, y) = centre + step * ((i - w/2) along the axis
    # + (j - h/2) across it); Pillow wants that map's coefficients.
    coefficients = (
        step * cos,
        -step * sin,
        cx - step * (half_width * cos - half_height * sin),
        step * sin,
        step * cos,
        cy - step * (half_width * sin + half_height * cos),
    )
    fill = pose.background if image.mode == "RGB" else 0
    return image.transform(
        (out_width, out_height), Image.AFFINE, coefficients, resample=resample, fillcolor=fill
    )


def measure_box(paths: Iterable[Path | str], workers: int = 2) -> Box:
    """The box that holds the largest part found in these images, plus MARGIN; ValueError
    when no image shows a part on a plain background."""

    def pose_of(path: Path | str) -> Pose:
        return find_pose(load_image(path))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        poses = [pose for pose in pool.map(pose_of, paths) if pose.length > 0]
    if not poses:
        raise ValueError("no part found on a plain background in the training images")
    length = max(pose.length for pose in poses) * (1 + MARGIN)
    breadth = max(pose.breadth for pose in poses) * (1 + MARGIN)
    return Box(round(length, 4), round(breadth, 4))


def part_regions(cuts: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(B, h, w): which patches of each aligned cut lie on the part or next to it.

    On an aligned cut, a patch of background can only raise false alarms (dust, light
    falling off towards the frame, the filled corners), so PatchCore scores the part alone.
    The part is the foreground of the (B, H, W, 3) uint8 cut the network input was made
    from, so fitting and scoring find the same patches; a patch counts when any part pixel
    falls in it or in one of its 8 neighbours. A cut with no foreground counts every patch.
    """
    height, width = grid
    # The channels' rounded mean: a sum of three integers over 3 never ends in .5, so
    # (sum + 1) // 3 is that rounding exactly.
    greys = ((cuts.sum(axis=-1, dtype=np.uint16) + 1) // 3).astype(np.uint8)
    regions = np.empty((len(cuts), height, width), dtype=bool)
    for index, grey in enumerate(greys):
        mask = Image.fromarray(foreground(grey).astype(np.uint8) * 255)
        part = np.asarray(mask.resize((width, height), Image.Resampling.BOX)) > 0
        grown = np.pad(part, 1)
        part = np.logical_or.reduce(
            [grown[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        )
        regions[index] = part if part.any() else True
    return regions

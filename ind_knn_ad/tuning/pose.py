"""Where the training parts lie: the pose statistic that decides alignment (step 1 of
`autosettings`). NumPy and Pillow only.

`bench/auto_settings.py` prints it for every shared set; the thresholds below are set from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ind_knn_ad.io.alignment import POSE_LONGEST, POSE_SIDE, Pose, find_pose, foreground
from ind_knn_ad.io.images import load_image
from ind_knn_ad.search.coreset import seeded_sample

POSE_IMAGES = 32  # seeded sample of training images whose pose is measured
ELONGATED = 1.5  # median length / breadth from which the long axis counts
TURNED_DEGREES = 20.0  # axial spread of the long axis above which parts count as turned
MOVED = 0.1  # spread of the centre (of the shorter side) above which parts count as moved
PLAIN_BORDER = 0.25  # largest share of frame-border pixels on the part's side of Otsu
FOUND = 0.9  # least share of sampled images in which a part is found


@dataclass(frozen=True)
class PoseSpread:
    """How the training parts lie, over a seeded sample of training images.

    `elongation` is the median length / breadth; `axis_spread` the axial circular standard
    deviation of the long axis in degrees (the axis without its direction, so 0 and 180
    are one pose; 90 stands for any angle), `None` for parts too round for an axis; `centre`
    the spread of the part's centre as a fraction of the shorter side; `border` the share of
    frame-border pixels on the part's side of Otsu's threshold (0 on a plain background);
    `side` the median shorter side of the photos in pixels (what a larger input can gain).
    """

    images: int
    found: int
    elongation: float
    axis_spread: float | None
    centre: float
    border: float
    side: int

    @property
    def plain(self) -> bool:
        """Parts on a plain background, found in (nearly) every image: alignment can work."""
        return self.border <= PLAIN_BORDER and self.found >= FOUND * self.images

    @property
    def turned(self) -> bool:
        return self.axis_spread is not None and self.axis_spread >= TURNED_DEGREES

    @property
    def moved(self) -> bool:
        return self.centre >= MOVED

    @property
    def varied(self) -> bool:
        """Align: the parts lie in varied poses on a plain background."""
        return self.plain and (self.turned or self.moved)

    def summary(self) -> str:
        axis = "n/a (round)" if self.axis_spread is None else f"{self.axis_spread:.1f} deg"
        return (
            f"parts found in {self.found}/{self.images}, elongation {self.elongation:.2f}, "
            f"axis spread {axis}, centre spread {self.centre:.3f}, border {self.border:.3f}"
        )

    def reason(self) -> str:
        if not self.plain:
            return "no part on a plain background in every image: not aligned"
        if self.turned:
            return f"long axis spread {self.axis_spread:.0f} deg >= {TURNED_DEGREES:g}: aligned"
        if self.moved:
            return f"centre spread {self.centre:.2f} >= {MOVED:g} of the frame: aligned"
        return "parts lie in one pose: not aligned"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "found": self.found,
            "elongation": round(self.elongation, 4),
            "axis_spread_degrees": None if self.axis_spread is None else round(self.axis_spread, 2),
            "centre_spread": round(self.centre, 4),
            "border_share": round(self.border, 4),
            "shorter_side": self.side,
            "align": self.varied,
        }


def border_share(image: Image.Image) -> float:
    """The share of the frame's border pixels on the part's side of Otsu's threshold, on the
    same small grey copy the pose is found on: about half for a texture, 0 for a part on a
    plain background."""
    width, height = image.size
    scale = min(POSE_SIDE / min(width, height), POSE_LONGEST / max(width, height))
    grey = image.convert("L").resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
    )
    mask = foreground(np.asarray(grey))
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return float(edge.mean())


def pose_spread(
    paths: Sequence[Path | str], seed: int = 0, images: int = POSE_IMAGES, workers: int = 2
) -> PoseSpread:
    """The pose statistic of a seeded sample of at most `images` training images."""

    def measure(path: Path | str) -> tuple[Pose, float, int]:
        image = load_image(path)
        return find_pose(image), border_share(image), min(image.size)

    chosen = [paths[i] for i in seeded_sample(len(paths), images, seed)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        measured = list(pool.map(measure, chosen))
    border = float(np.mean([share for _, share, _ in measured]))
    photo_side = int(np.median([side for _, _, side in measured]))
    found = [(pose, side) for pose, _, side in measured if pose.length > 0]
    if len(found) < 2:
        return PoseSpread(len(chosen), len(found), 0.0, None, 0.0, border, photo_side)
    poses = [pose for pose, _ in found]
    elongation = float(np.median([p.length / max(p.breadth, 1e-9) for p in poses]))
    axis_spread = None
    if elongation >= ELONGATED:
        # Doubled angles make the axis directionless; R is their mean resultant length.
        resultant = abs(np.mean(np.exp(2j * np.array([p.angle for p in poses]))))
        spread = math.sqrt(-2.0 * math.log(max(resultant, 1e-12))) / 2.0
        axis_spread = min(90.0, math.degrees(spread))
    centres = np.array([[x / side, y / side] for (x, y), side in ((p.centre, s) for p, s in found)])
    centre = float(np.sqrt(centres.var(axis=0).sum()))
    return PoseSpread(len(chosen), len(found), elongation, axis_spread, centre, border, photo_side)

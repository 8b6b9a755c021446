"""The one preprocessing path shared by fit, evaluation and scoring: a decoded image to
the network's input, cut the same way everywhere.

Above `images` (decoding) and `alignment` (the pose and the cut), which import neither
this nor each other's callers. NumPy and Pillow only: scoring imports this without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ind_knn_ad.io.alignment import Box, Pose, cut, find_pose, output_size
from ind_knn_ad.io.images import load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Prepared:
    """One decoded image as every later step needs it, so no step decodes its file again:
    the network's input, the cut it was made from (heatmaps, contact-sheet tiles and part
    regions are drawn or found on it), and the photo's size and the part's pose (a mask is
    checked against the one and cut with the other)."""

    array: np.ndarray  # (3, H, W) float32, normalised
    cut: np.ndarray  # (H, W, 3) uint8 RGB
    size: tuple[int, int]  # (width, height) of the decoded photo
    pose: Pose | None  # with `align` only


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize` (bicubic), cut the input out, normalise.

    The cut is the centre square of side `crop`, or with `align` the box around the part,
    turned to one pose (see `alignment`; `crop` is then not used). `crop == resize` keeps
    the whole (square) frame, which matters when defects sit near the border. Stored in the
    model file so scoring repeats exactly what fitting did.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    align: Box | None = None

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be in 1..resize ({self.resize})")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the network's input."""
        if self.align is None:
            return self.crop, self.crop
        return output_size(self.align, self.resize)

    @property
    def label(self) -> str:
        """The input in a few characters, for tables: `256/224` or `aligned 557x192`."""
        if self.align is None:
            return f"{self.resize}/{self.crop}"
        return "aligned {}x{}".format(*self.size)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.align is None:
            del data["align"]  # what format version 1 files hold
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        align = data.get("align")
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            align=None if align is None else Box(float(align["length"]), float(align["breadth"])),
        )

    def geometry(self, image: Image.Image, pose: Pose | None = None) -> Image.Image:
        """The resize and cut alone, so masks and heatmaps can follow the same geometry.
        With `align`, the cut follows `pose` (the photo's, for its mask), or the pose
        found on `image` itself."""
        resample = Image.Resampling.NEAREST if image.mode in ("1", "L") else Image.BICUBIC
        if self.align is not None:
            pose = find_pose(image) if pose is None else pose
            return cut(image, pose, self.align, self.resize, resample)
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        if size[0] * size[1] <= max(width * height, 4 * self.crop * self.crop):
            # The resized frame is no larger than the decoded image (or a few crops).
            image = image.resize(size, resample)
            return image.crop((left, top, left + self.crop, top + self.crop))
        # A thin image (10000x2) resized whole would take gigabytes for a crop of 224 px:
        # resize only the source region that lands in the crop. Pillow's filter still
        # reads the pixels around that region, so this is the same picture up to the
        # rounding of its two passes; the branch above keeps every other image bit-exact.
        x_step, y_step = width / size[0], height / size[1]
        region = (
            left * x_step,
            top * y_step,
            (left + self.crop) * x_step,
            (top + self.crop) * y_step,
        )
        return image.resize((self.crop, self.crop), resample, box=region)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image to a float32 CHW array ready for the backbone."""
        return self.prepare(image).array

    def prepare(self, image: Image.Image) -> Prepared:
        """RGB image to the network's input and what later steps need of it (`Prepared`)."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # no copy of an RGB image
        pose = find_pose(rgb) if self.align is not None else None
        cut = np.asarray(self.geometry(rgb, pose))
        return Prepared(self.normalise(cut), cut, rgb.size, pose)

    def normalise(self, cut: np.ndarray) -> np.ndarray:
        """The (H, W, 3) uint8 cut that `geometry` gives to the backbone's float32 CHW input."""
        array = cut.astype(np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def load(self, path: str | Path) -> np.ndarray:
        """Decode and preprocess one file: the network's input alone."""
        return self(load_image(path))

    def prepare_file(
        self, path: str | Path, reserve: Callable[[int], None] | None = None
    ) -> Prepared:
        """Decode and preprocess one file, keeping what later steps need; `reserve` as for
        `load_image`."""
        return self.prepare(load_image(path, reserve))

"""Image decoding and the one preprocessing path shared by fit, evaluation and scoring.

NumPy and Pillow only: scoring imports this without paying for torch.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# Refuse anything larger before decoding it: a 20000x20000 PNG or a decompression bomb
# would otherwise take gigabytes. 8192x8192 is far beyond any inspection camera we expect.
MAX_PIXELS = 8192 * 8192


class ImageError(Exception):
    """An image file that cannot be used; the message names the file and the problem."""


def is_image_file(path: Path) -> bool:
    """True for the extensions we read (PNG, JPEG, BMP, TIFF), in any letter case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16-bit and float images are scaled, not clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode a file into an RGB image, honouring EXIF orientation.

    Orientation is applied so that the pixels match what image viewers show people:
    masks, heatmaps and the operator's eye all agree on where a defect is.
    """
    name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: image is {width}x{height}, larger than the "
                        f"{MAX_PIXELS} pixel limit"
                    )
                if width < 2 or height < 2:
                    raise ImageError(f"{name}: image is {width}x{height}, too small to inspect")
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (or an unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: cannot decode image ({error})") from None


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize` (bicubic), centre-crop `crop`, normalise.

    `crop == resize` keeps the whole (square) frame, which matters when defects sit near
    the border. Stored in the model file so scoring repeats exactly what fitting did.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be in 1..resize ({self.resize})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )

    def geometry(self, image: Image.Image) -> Image.Image:
        """The resize and crop alone, so masks and heatmaps can follow the same geometry."""
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        resample = Image.Resampling.NEAREST if image.mode in ("1", "L") else Image.BICUBIC
        image = image.resize(size, resample)
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        return image.crop((left, top, left + self.crop, top + self.crop))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image to a float32 CHW array ready for the backbone."""
        array = np.asarray(self.geometry(image.convert("RGB")), dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def load(self, path: str | Path) -> np.ndarray:
        """Decode and preprocess one file."""
        return self(load_image(path))

"""Image decoding: a file to an RGB image, or one ImageError naming it.

NumPy and Pillow only, and below `alignment` and `preprocess`, which build on it; scoring
imports it without paying for torch.

What the loader accepts, and why:

- Any mode Pillow decodes (grayscale, palette, RGBA, CMYK, 16-bit, float) becomes 8-bit RGB.
  16-bit images are scaled (65535 -> 255), not clipped; alpha is dropped, not composited
  (what is under a transparent pixel is scored as it is stored).
- EXIF orientation is honoured, so pixels match what viewers show the operator.
- The file's content decides the format; the extension is not trusted (a PNG named `.jpg`
  is read as the PNG it is).
- Images smaller than 2x2, larger than MAX_PIXELS, or taking more than DECODE_BYTES to
  decode in their mode are refused from the header alone, before any pixel is decoded: a
  20000x20000 PNG or a decompression bomb costs no memory, and no image more than an
  8192x8192 RGB one.
  Preprocessing (`preprocess`) resizes only what lands in the crop, so a thin image (50000x2) that
  passes the pixel limit costs no more than a square one either.
- Every failure, whatever Pillow raised, becomes one ImageError whose one-line message
  names the file: callers need to handle nothing else.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from ind_knn_ad.errors import ImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# Refuse anything larger before decoding it: a 20000x20000 PNG or a decompression bomb
# would otherwise take gigabytes. 8192x8192 is far beyond any inspection camera we expect.
MAX_PIXELS = 8192 * 8192
# Decoding holds the pixels in the file's mode and, but for 8-bit RGB, an RGB copy (deep
# images also a grey one): together at most what the largest RGB image takes, which keeps
# the loader within 300 MB of memory (tests/test_image_loader.py measures the peak).
DECODE_BYTES = MAX_PIXELS * 3
MIN_SIDE = 2
# What Pillow's parsers raise on malformed data, besides OSError and the bomb guard.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def shown_name(path: str | Path) -> str:
    """A file name fit for a one-line message: as is, or quoted with escapes when it holds
    control characters (a newline in a name must not split an error line in two)."""
    name = os.fsdecode(path)
    return name if name.isprintable() else repr(name)


def is_image_file(path: Path) -> bool:
    """True for the extensions we read (PNG, JPEG, BMP, TIFF), in any letter case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


_BLOCK_PIXELS = 1 << 22  # deep images are scaled in blocks of rows of about this many pixels


def _row_blocks(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) of a deep image, a block at a time, NaN and infinities
    made finite: a float copy of a whole 8192x8192 image would take 256 MB at once."""
    width, height = image.size
    rows = max(1, _BLOCK_PIXELS // width)
    for top in range(0, height, rows):
        block = image.crop((0, top, width, min(height, top + rows)))
        yield top, np.nan_to_num(np.asarray(block, dtype=np.float32))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Deeper images are scaled, not clipped: 16-bit modes
    (and 32-bit integer images with values above 255) by 65535, float images by 1, 255 or
    65535, whichever first holds their maximum. An RGB image is returned as it is."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        top = max(float(block.max()) for _, block in _row_blocks(image))
        if image.mode.startswith("I;16") or top > 255:
            full_scale = 65535.0
        elif image.mode == "F" and top <= 1:
            full_scale = 1.0
        else:
            full_scale = 255.0
        grey = np.empty(image.size[::-1], dtype=np.uint8)
        for first, block in _row_blocks(image):
            scaled = np.clip(block / full_scale * 255.0 + 0.5, 0, 255)
            grey[first : first + len(block)] = scaled.astype(np.uint8)
        image.close()  # the deep pixels are no longer needed: free them before the RGB copy
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


@functools.cache
def _silence_libtiff() -> None:
    """libtiff reports a damaged file on stderr itself, from C, around Python (about one
    damaged TIFF in a few thousand: "TIFFReadDirectory: IO error ..."); Pillow raises for
    the same failure, which becomes the file's one error line. So libtiff's own error
    handler is turned off, once, before the first TIFF is decoded, in the copy Pillow
    loaded (its warnings Pillow already silences). Where that copy cannot be found (not
    Linux), nothing changes."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line.split()[-1]}
    except OSError:
        return
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        handler = library.TIFFSetErrorHandler
        handler.restype, handler.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        handler(None)


def _check_file(path: str | Path, name: str) -> None:
    """Refuse what is not a regular file before opening it: a FIFO would block forever."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        # Directories reach the loader only when expanding them found no image to score.
        with os.scandir(path):  # PermissionError: reported as such by load_image
            pass
        raise ImageError(f"{name}: is a directory with no image files (PNG, JPEG, BMP, TIFF)")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{name}: not a regular file")


def decode_bytes(mode: str, pixels: int) -> int:
    """Bytes that decoding `pixels` of an image in `mode` holds at its peak: its own pixels,
    then, unless it is 8-bit RGB, an RGB copy (and for deep modes a grey one before it)."""
    try:
        layout = ImageMode.getmode(mode)
        own = len(layout.bands) * np.dtype(layout.typestr).itemsize
    except (KeyError, TypeError):  # a mode Pillow cannot describe: assume the widest
        own = 16
    if mode == "RGB":
        return pixels * own
    deep = mode.startswith("I") or mode == "F"
    return pixels * (own + 3 + (1 if deep else 0))


def load_image(path: str | Path) -> Image.Image:
    """Decode a file into an RGB image, honouring EXIF orientation; else raise ImageError.

    Orientation is applied so that the pixels match what image viewers show people:
    masks, heatmaps and the operator's eye all agree on where a defect is.
    """
    name = shown_name(path)
    try:
        _check_file(path, name)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: image is {width}x{height}, more than the {MAX_PIXELS} pixel "
                    "limit (refused before decoding)"
                )
            if width < MIN_SIDE or height < MIN_SIDE:
                raise ImageError(f"{name}: image is {width}x{height}, too small to inspect")
            need = decode_bytes(image.mode, width * height)
            if need > DECODE_BYTES:
                raise ImageError(
                    f"{name}: image is {width}x{height} {image.mode}, which takes about "
                    f"{need / 1e6:.0f} MB to decode, more than the {DECODE_BYTES / 1e6:.0f} MB "
                    "limit (refused before decoding)"
                )
            if image.format == "TIFF":
                _silence_libtiff()
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # a copy would double the memory
            return _to_rgb(image)
    except ImageError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (or an unsupported format)") from None
    except Image.DecompressionBombError:
        raise ImageError(
            f"{name}: image is more than the {MAX_PIXELS} pixel limit (refused before decoding)"
        ) from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode the image") from None
    except _DECODE_ERRORS as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ImageError(f"{name}: cannot decode image ({reason})") from None
    except Exception as error:  # a damaged file trips Pillow's own code too
        # (a TIFF whose strip offset is a fraction: TypeError), and is still just a bad file.
        reason = " ".join(str(error).split())
        raise ImageError(
            f"{name}: cannot decode image ({type(error).__name__}: {reason})"
        ) from None

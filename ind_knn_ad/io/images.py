"""Image decoding: a file to an RGB image, or one ImageError naming it.

NumPy and Pillow only, and below `alignment` and `preprocess`, which build on it; scoring
imports it without paying for torch.

What the loader accepts, and why:

- Any mode Pillow decodes (grayscale, palette, RGBA, CMYK, 16-bit, float) becomes 8-bit RGB.
  16-bit images are scaled (65535 -> 255), not clipped; alpha is dropped, not composited
  (what is under a transparent pixel is scored as it is stored).
- EXIF orientation is honoured, so pixels match what viewers show the operator.
- The file's content decides the format; the extension is not trusted (a PNG named `.jpg`
  is read as the PNG it is). Only PNG, JPEG, BMP and TIFF are decoded (FORMATS): Pillow's
  other decoders (WebP, JPEG 2000, AVIF) took 3 to 5 times an image's pixels in memory.
- Images smaller than 2x2, larger than MAX_PIXELS, or taking more than DECODE_BYTES to
  decode are refused from the header alone, before any pixel is decoded: a 20000x20000 PNG
  or a decompression bomb costs no memory, and no image more than an 8192x8192 RGB one.
  What decoding takes is counted per format (`decode_need`): the pixels in their mode and
  their RGB copy, Pillow's row pointers, a PNG's two rows, a progressive JPEG's
  coefficients, a compressed TIFF's strip or tile, an EXIF turn's copy.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from ind_knn_ad.errors import ImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# The formats decoded, whatever the extension; Pillow's other decoders are never tried.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
# Formats told apart by their first bytes, to name them when they are refused.
_OTHER_FORMATS = {
    b"RIFF": "WebP",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xffO\xffQ": "JPEG 2000",
    b"GIF8": "GIF",
    b"ftypavif": "AVIF",
    b"ftypheic": "HEIF",
}
# Refuse anything larger before decoding it: a 20000x20000 PNG or a decompression bomb
# would otherwise take gigabytes. 8192x8192 is far beyond any inspection camera we expect.
MAX_PIXELS = 8192 * 8192
# Decoding holds the pixels in the file's mode and, but for 8-bit RGB, an RGB copy (deep
# images also a grey one), and the decoder's own buffers (`decode_need`): together at most
# what the largest RGB image takes with its row pointers and a PNG's rows (1 MiB), which
# keeps the loader within 300 MB of memory (tests/test_image_loader.py measures the peak).
DECODE_BYTES = MAX_PIXELS * 3 + (1 << 20)
MIN_SIDE = 2
# Pillow allocates pixels in blocks of 16 MB, which malloc keeps after the image is freed
# (two 8192x8192 decodes in turn left the process 400 MB larger, and the feature graph
# then failed under an address-space limit). Blocks above malloc's largest mmap threshold
# (32 MB) are mapped and unmapped whole; an image smaller than one block takes only its size.
PIXEL_BLOCK_BYTES = 64 << 20
Image.core.set_block_size(PIXEL_BLOCK_BYTES)
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


def _pixel_bytes(mode: str) -> int:
    try:
        layout = ImageMode.getmode(mode)
        return len(layout.bands) * np.dtype(layout.typestr).itemsize
    except (KeyError, TypeError):  # a mode Pillow cannot describe: assume the widest
        return 16


def decode_bytes(mode: str, pixels: int) -> int:
    """Bytes that decoding `pixels` of an image in `mode` holds at its peak: its own pixels,
    then, unless it is 8-bit RGB, an RGB copy (and for deep modes a grey one before it)."""
    own = _pixel_bytes(mode)
    if mode == "RGB":
        return pixels * own
    deep = mode.startswith("I") or mode == "F"
    return pixels * (own + 3 + (1 if deep else 0))


def _turns(image: Image.Image) -> bool:
    """True when EXIF orientation asks for a turn or flip. A PNG's eXIf chunk after its
    pixels is only seen once they are decoded (`load_image` checks again then)."""
    if image.format == "PNG" and "exif" not in image.info:
        return False
    try:
        return image.getexif().get(0x0112, 1) in range(2, 9)
    except Exception:  # a damaged EXIF block: exif_transpose will not turn either
        return False


def _decoder_bytes(image: Image.Image) -> tuple[int, str]:
    """What the format's decoder holds besides the pixels, in bytes, and what it is."""
    width, height = image.size
    if image.format == "PNG":  # the row being unfiltered and the one above it
        return 2 * (width * _pixel_bytes(image.mode) + 1), "PNG rows"
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
        most = max(h * v for _, h, v, _ in layers)
        samples = sum(h * v for _, h, v, _ in layers) / most  # per pixel, subsampled
        return int(width * height * samples * 2), "progressive JPEG"  # 16-bit coefficients
    tile = image.tile[0] if image.tile else None
    if image.format == "TIFF" and tile is not None and tile.codec_name == "libtiff":
        tags = getattr(image, "tag_v2", {})
        if 322 in tags and 323 in tags:
            area = int(tags[322]) * int(tags[323])
        else:
            area = width * min(height, int(tags.get(278, height)))
        depth = max(4, -(-sum(tags.get(258, (8,))) // 8))
        return area * depth, "compressed TIFF"
    return 0, ""


def decode_need(image: Image.Image) -> tuple[int, str]:
    """Bytes that decoding an opened (not yet loaded) image holds at its peak, and what
    besides its pixels makes them up: its pixels and RGB copy (`decode_bytes`), Pillow's
    row pointers, its decoder's buffers (`_decoder_bytes`) and an EXIF turn's copy."""
    width, height = image.size
    pixels = width * height
    need = decode_bytes(image.mode, pixels) + 8 * height
    extra, what = _decoder_bytes(image)
    if _turns(image):
        extra += pixels * _pixel_bytes(image.mode)
        what = f"{what}, EXIF turn" if what else "EXIF turn"
    return need + extra, what


def _format_name(path: str | Path) -> str | None:
    """The name of a known format Pillow may read but we do not, from the first bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return None
    for magic, name in _OTHER_FORMATS.items():
        if head.startswith(magic) or head[4:].startswith(magic):
            return name
    return None


def _checked_need(image: Image.Image, name: str) -> int:
    """What decoding this opened image takes (`decode_need`), or the ImageError refusing it
    from its header: too many pixels, too small, or taking more than DECODE_BYTES."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name}: image is {width}x{height}, more than the {MAX_PIXELS} pixel "
            "limit (refused before decoding)"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{name}: image is {width}x{height}, too small to inspect")
    need, what = decode_need(image)
    if need > DECODE_BYTES:
        raise ImageError(
            f"{name}: image is {width}x{height} {image.mode}{f' ({what})' if what else ''}, "
            f"which takes about {need / 1e6:.0f} MB to decode, more than the "
            f"{DECODE_BYTES / 1e6:.0f} MB limit (refused before decoding)"
        )
    return need


def load_image(path: str | Path, reserve: Callable[[int], None] | None = None) -> Image.Image:
    """Decode a file into an RGB image, honouring EXIF orientation; else raise ImageError.

    Orientation is applied so that the pixels match what image viewers show people:
    masks, heatmaps and the operator's eye all agree on where a defect is. `reserve`, if
    given, is called with the bytes decoding will take before any pixel is decoded (it may
    wait for memory, or raise ImageError); a turn found only after decoding adds its copy.
    """
    name = shown_name(path)
    try:
        _check_file(path, name)
        with Image.open(path, formats=FORMATS) as image:
            need = _checked_need(image, name)
            turned = _turns(image)
            if reserve is not None:
                reserve(need)
            if image.format == "TIFF":
                _silence_libtiff()
            image.load()
            if not turned and _turns(image):  # a PNG's eXIf chunk after its pixels
                extra = image.size[0] * image.size[1] * _pixel_bytes(image.mode)
                if need + extra > DECODE_BYTES:
                    raise ImageError(
                        f"{name}: image is {image.size[0]}x{image.size[1]} {image.mode} (EXIF "
                        f"turn), which takes about {(need + extra) / 1e6:.0f} MB to decode, "
                        f"more than the {DECODE_BYTES / 1e6:.0f} MB limit"
                    )
                if reserve is not None:
                    reserve(extra)
            ImageOps.exif_transpose(image, in_place=True)  # a copy would double the memory
            return _to_rgb(image)
    except ImageError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        other = _format_name(path)
        if other is not None:
            raise ImageError(
                f"{name}: {'an' if other[0] in 'AEIOU' else 'a'} {other} image; only PNG, JPEG, "
                "BMP and TIFF are read"
            ) from None
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

"""Heatmap pictures a person can judge: one colour scale anchored to the threshold, the
flagged region and the ground truth outlined, the photo as the camera took it beside the map.

NumPy and Pillow (SciPy once an outline is drawn), so the scorer's `--heatmap` and
`--report` use them without a plotting library.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ind_knn_ad.io.images import load_image

ALPHA = 0.5  # weight of the colour over the image
# The scale spans 0.4 to 1.3 times the threshold, so the threshold sits two thirds up the
# bar: what reaches it is orange to dark red on every image, what stays below is blue to
# yellow, whatever the model's own score units.
ANCHOR = (0.4, 1.3)
FLAGGED_EDGE = (255, 255, 255)  # the outline of the region at or above the threshold
TRUTH_EDGE = (0, 230, 0)  # the outline of the ground-truth mask
PANEL = 384  # height in pixels of the photo and the map shown for a wrong verdict


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to RGB uint8 on the jet scale: dark blue, cyan, yellow, dark red."""
    scaled = 4.0 * np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(scaled - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, amap: np.ndarray, low: float, high: float) -> Image.Image:
    """The RGB image with the map's colours blended over it (both the same size)."""
    colours = colormap((amap - low) / (high - low)).astype(np.float32)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(((1.0 - ALPHA) * pixels + ALPHA * colours + 0.5).astype(np.uint8))


def anchored_range(threshold: float) -> tuple[float, float]:
    """The colour scale's ends for maps in score units, from the threshold alone: the same
    on every image of a run, so colours compare across images and runs of the model."""
    return ANCHOR[0] * threshold, ANCHOR[1] * threshold


def scale_of(maps: list[np.ndarray], threshold: float, in_score_units: bool) -> tuple[float, float]:
    """The one colour scale of a page: anchored to the threshold when the maps are in score
    units; else (a map the threshold does not apply to) from the lowest to the highest value."""
    if in_score_units:
        return anchored_range(threshold)
    low = min((float(m.min()) for m in maps), default=0.0)
    high = max((float(m.max()) for m in maps), default=1.0)
    return low, max(high, low + 1e-6)


def edges(region: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of a boolean region within `width` of its border, inside it."""
    from scipy import ndimage  # here: a one-off call without maps needs no SciPy

    return region & ~ndimage.binary_erosion(region, iterations=width, border_value=0)


def map_picture(
    cut: np.ndarray,
    amap: np.ndarray,
    span: tuple[float, float],
    threshold: float | None,
    truth: np.ndarray | None = None,
    height: int | None = None,
) -> Image.Image:
    """The (H, W, 3) cut with its (H, W) map blended over it on the scale `span`, the region
    at or above `threshold` outlined in white (None: no outline) and the (H, W) ground truth
    in green; enlarged to `height` pixels first when given, so outlines stay thin."""
    image, values = Image.fromarray(cut), amap.astype(np.float32)
    truth_mask = None if truth is None else truth.astype(bool)
    if height is not None and height != cut.shape[0]:
        size = (round(cut.shape[1] * height / cut.shape[0]), height)
        image = image.resize(size, Image.Resampling.BICUBIC)
        values = np.asarray(Image.fromarray(values, mode="F").resize(size, Image.BILINEAR))
        if truth_mask is not None:
            grown = Image.fromarray(truth_mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
            truth_mask = np.asarray(grown) > 127
    pixels = np.array(overlay(image, values, *span))
    if threshold is not None:
        pixels[edges(values >= threshold)] = FLAGGED_EDGE
    if truth_mask is not None:
        pixels[edges(truth_mask)] = TRUTH_EDGE
    return Image.fromarray(pixels)


def photo(path: Path | str, height: int = PANEL) -> Image.Image:
    """The photo as the camera took it (no crop, no turn), scaled to `height` pixels."""
    image = load_image(path).convert("RGB")
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def data_uri(picture: Image.Image, quality: int = 80) -> str:
    """The picture as an embedded WebP: a page with every image in it, no file beside it."""
    buffer = io.BytesIO()
    picture.save(buffer, format="WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ramp(length: int = 256) -> np.ndarray:
    """The colour scale as (length, 3) RGB floats in [0, 1], for matplotlib's colour bar."""
    return colormap(np.linspace(0.0, 1.0, length)).astype(np.float64) / 255.0

"""Pictures of the anomaly map: one PNG per scored image, and a contact sheet of a test set.

NumPy and Pillow only (Pillow's own scalable font for the labels), so `--heatmap` adds no
dependency; SciPy is imported, by `anomaly_map`, only when a map is drawn.

The map is drawn on the image as the model saw it: resized and cut to the model's input
(the centre square, or with part alignment the turned box around the part), so every
coloured pixel lies exactly where the model looked; the same image without colours is
shown beside it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ind_knn_ad import methods
from ind_knn_ad.io.atomic import atomic_write
from ind_knn_ad.io.datasets import GOOD
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.report.pictures import anchored_range, colormap, edges, overlay

BAR_PANEL = 150  # pixels right of the map: the colour bar, its ends and the threshold
BAR_WIDTH = 14
HEADER = 24  # pixels above the pictures: score, threshold and verdict
GAP = 8  # between the plain image and the map
FONT_SIZE = 14  # of a heatmap PNG's labels (Pillow's own scalable font)
TILE = 128  # longer side of each picture on the contact sheet
COLUMNS = 4  # contact-sheet cells per row; each cell is the image and its map, side by side
CAPTION = 30  # two text lines under each contact-sheet cell
MAX_NAME_BYTES = 255  # the usual limit on one file name
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
WRONG = (200, 0, 0)  # caption colour of a contact-sheet image the threshold gets wrong
MAP_SIGMA = 4.0  # the Gaussian blur of the upsampled patch map, in input pixels


def anomaly_map(
    patch_map: np.ndarray, size: tuple[int, int], sigma: float = MAP_SIGMA
) -> np.ndarray:
    """Patch distances upsampled (bilinear) to the model's input (width, height), then
    Gaussian-blurred."""
    from scipy.ndimage import gaussian_filter  # here: a one-off call without maps needs no SciPy

    upsampled = Image.fromarray(patch_map.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    return gaussian_filter(np.asarray(upsampled, dtype=np.float32), sigma=sigma, truncate=4.0)


def _label(value: float) -> str:
    return f"{value:.4g}"


def _colour_bar(
    length: int, low: float, high: float, vertical: bool, mark: float | None = None
) -> Image.Image:
    """A bar from low to high (high at the top or on the right) with its end values; a
    vertical one marks `mark` (the threshold) with a line across and its value."""
    ramp = colormap(np.linspace(0.0, 1.0, length))
    if vertical:
        font = ImageFont.load_default(size=FONT_SIZE)
        bar = Image.fromarray(np.repeat(ramp[::-1, None, :], BAR_WIDTH, axis=1))
        panel = Image.new("RGB", (BAR_PANEL, length), BACKGROUND)
        panel.paste(bar, (4, 0))
        draw = ImageDraw.Draw(panel)
        draw.text((BAR_WIDTH + 8, 0), _label(high), fill=TEXT, font=font)
        draw.text((BAR_WIDTH + 8, length), _label(low), fill=TEXT, font=font, anchor="ld")
        if mark is not None and low <= mark <= high:
            y = round((high - mark) / (high - low) * (length - 1))
            draw.line((0, y, BAR_WIDTH + 6, y), fill=TEXT, width=2)
            draw.text(
                (BAR_WIDTH + 8, y), f"{_label(mark)} threshold", fill=TEXT, font=font, anchor="lm"
            )
        return panel
    font = ImageFont.load_default()
    bar = Image.fromarray(np.repeat(ramp[None, :, :], BAR_WIDTH, axis=0))
    panel = Image.new("RGB", (length, BAR_WIDTH + 14), BACKGROUND)
    panel.paste(bar, (0, 0))
    draw = ImageDraw.Draw(panel)
    draw.text((0, BAR_WIDTH + 1), _label(low), fill=TEXT, font=font)
    draw.text((length, BAR_WIDTH + 1), _label(high), fill=TEXT, font=font, anchor="ra")
    return panel


def heatmap_picture(
    plain: Image.Image,
    map_image: Image.Image,
    span: tuple[float, float],
    threshold: float | None,
    title: str,
) -> Image.Image:
    """One image's PNG: a title line; the image without colours; the map (`map_image`,
    the same image with its colours and outline); the colour bar.

    The map is the `width x height` box ending BAR_PANEL pixels from the right, below
    HEADER: the picture is (plain width + GAP + width + BAR_PANEL) x (height + HEADER).
    """
    width, height = map_image.size
    left = plain.width + GAP
    picture = Image.new("RGB", (left + width + BAR_PANEL, height + HEADER), BACKGROUND)
    font = ImageFont.load_default(size=FONT_SIZE)
    ImageDraw.Draw(picture).text((2, 4), title, fill=TEXT, font=font)
    picture.paste(plain, (0, HEADER))
    picture.paste(map_image, (left, HEADER))
    picture.paste(_colour_bar(height, *span, vertical=True, mark=threshold), (left + width, HEADER))
    return picture


def heatmap_name(path: str | os.PathLike[str]) -> str:
    """The PNG's path in the heatmap folder for an input: the input's path as given, its
    folders kept, plus `.png`, so the maps mirror the input tree (`test/good/000.png` ->
    `test/good/000.png.png`). `.` parts are dropped and the root of an absolute path is
    the folder `%2F`; within each part `%` becomes `%25`, and a leading `.`, control
    characters and bytes that are not UTF-8 are percent-encoded too, so distinct paths
    give distinct names and no part is hidden or `..`. A part longer than a file system
    allows keeps its start and gains a hash of the whole part.
    """
    parts = [part for part in PurePosixPath(os.fsdecode(path)).parts if part != "."]
    parts[-1] += ".png"
    return "/".join("%2F" if part == "/" else _part_name(part) for part in parts)


def _part_name(part: str) -> str:
    """One path part made a visible, safe file name (see heatmap_name)."""
    encoded = []
    for index, char in enumerate(part):
        if char == "%" or not char.isprintable() or (char == "." and index == 0):
            raw = char.encode("utf-8", "surrogateescape")
            encoded.append("".join(f"%{byte:02X}" for byte in raw))
        else:
            encoded.append(char)
    name = "".join(encoded)
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = sha256(os.fsencode(part)).hexdigest()[:16]
    head = name.encode()[: MAX_NAME_BYTES - len(digest) - 6].decode("utf-8", "ignore")
    return f"{head}~{digest}" + (".png" if part.endswith(".png") else "")


def image_heatmap(
    cut: np.ndarray,
    patch_map: np.ndarray,
    preprocess: Preprocess,
    in_score_units: bool,
    threshold: float,
    title: str,
) -> Image.Image:
    """The PNG for one scored image: its (H, W, 3) uint8 cut, as the model saw it, plain
    and with its blurred, upsampled map over it. (Not the photo as taken: scoring decodes
    each file once, and keeps only the cut.)

    A map in score units (`Method.map_in_score_units`) is drawn on the scale anchored to
    the threshold, the same for every image, and the region at or above the threshold is
    outlined in white; any other map spans its own lowest to highest value.
    """
    amap = anomaly_map(patch_map, preprocess.size)
    if in_score_units:
        span, mark = anchored_range(threshold), threshold
    else:
        low = float(amap.min())
        span, mark = (low, max(float(amap.max()), low + 1e-6)), None
    pixels = np.array(overlay(Image.fromarray(cut), amap, *span))
    if mark is not None:
        pixels[edges(amap >= mark)] = (255, 255, 255)
    return heatmap_picture(Image.fromarray(cut), Image.fromarray(pixels), span, mark, title)


def write_heatmap(
    folder: Path,
    path: Path | str,
    cut: np.ndarray,
    result: PatchScores,
    model: Model,
    preprocess: Preprocess,
    threshold: float,
    flag: int,
) -> str:
    """The heatmap PNG of the image scored from `path`, drawn on its cut (as prepared for
    scoring, not read again), in `folder`, named after the path (see heatmap_name); the
    name written."""
    verdict = "defective" if flag else "good"
    title = f"score {result.score:.6f}  threshold {threshold:.6g}  {verdict}"
    units = methods.find(model.method).map_in_score_units
    picture = image_heatmap(cut, result.patch_map, preprocess, units, threshold, title)
    target = folder / heatmap_name(path)
    write_png(picture, target)
    return os.fsdecode(target)


def png_bytes(picture: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """The picture as PNG bytes, with `text` as tEXt chunks (key, value)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(picture: Image.Image, path: Path) -> None:
    """Encode, then write atomically: a reader never sees half a PNG."""
    atomic_write(path, png_bytes(picture))


@dataclass
class SheetEntry:
    """One contact-sheet cell: the image as the model saw it and its map, both shrunk to
    TILE pixels (a large test set then costs little memory), its score and ground truth."""

    image: Image.Image
    amap: np.ndarray
    score: float
    defect_type: str
    name: str


def sheet_entry(
    path: Path,
    cut: np.ndarray,
    patch_map: np.ndarray,
    preprocess: Preprocess,
    score: float,
    defect_type: str,
) -> SheetEntry:
    """The cell for one scored test image, from its (H, W, 3) uint8 cut: only the shrunk
    tile is kept, so the sheet holds no full cut."""
    width, height = preprocess.size
    scale = TILE / max(width, height)  # an aligned cut is wider than high: keep its shape
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(cut).resize(tile, Image.Resampling.BILINEAR)
    amap = Image.fromarray(anomaly_map(patch_map, preprocess.size), mode="F")
    small = np.asarray(amap.resize(tile, Image.Resampling.BILINEAR))
    return SheetEntry(image, small, score, defect_type, path.name)


def contact_sheet(entries: Sequence[SheetEntry], threshold: float, title: str) -> Image.Image:
    """The entries, highest score first, each as image and blended map side by side over
    its score, verdict and `defect type/file name`; a caption in red marks an image the
    threshold gets wrong. One colour scale for the whole sheet, so maps compare at a glance.
    """
    ordered = sorted(entries, key=lambda entry: -entry.score)
    low = min((float(entry.amap.min()) for entry in ordered), default=0.0)
    high = max((float(entry.amap.max()) for entry in ordered), default=1.0)
    high = max(high, low + 1e-6)
    # Every picture has the model's input shape: square, or wider than high when aligned.
    tile_width, tile_height = ordered[0].image.size if ordered else (TILE, TILE)
    cell_width, cell_height = 2 * tile_width + 8, tile_height + CAPTION
    width = COLUMNS * cell_width
    rows = -(-len(ordered) // COLUMNS)
    top = 56
    sheet = Image.new("RGB", (width, top + rows * cell_height), BACKGROUND)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=TEXT, font=font)
    sheet.paste(_colour_bar(width // 2, low, high, vertical=False), (4, 22))
    for index, entry in enumerate(ordered):
        x = (index % COLUMNS) * cell_width
        y = top + (index // COLUMNS) * cell_height
        sheet.paste(entry.image, (x, y))
        sheet.paste(overlay(entry.image, entry.amap, low, high), (x + tile_width, y))
        flagged = entry.score >= threshold
        colour = WRONG if flagged != (entry.defect_type != GOOD) else TEXT
        lines = (
            f"{entry.score:.4g}  {'defective' if flagged else 'good'}",
            f"{entry.defect_type}/{entry.name}",
        )
        for line, text in enumerate(lines):
            draw.text(
                (x + 2, y + tile_height + 2 + 13 * line), _fit(text, font), fill=colour, font=font
            )
    return sheet


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """The text, cut short with `...` where it would overflow a contact-sheet cell."""
    limit = 2 * TILE + 4
    if font.getlength(text) <= limit:
        return text
    while text and font.getlength(text + "...") > limit:
        text = text[:-1]
    return text + "..."

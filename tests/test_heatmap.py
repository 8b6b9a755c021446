"""Heatmaps: `anomaly_detector.py --heatmap DIR` and the contact sheet of make_model.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_script
from PIL import Image

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.report.heatmap import (
    BAR_PANEL,
    COLUMNS,
    GAP,
    HEADER,
    MAX_NAME_BYTES,
    TILE,
    colormap,
    heatmap_name,
)
from ind_knn_ad.report.pictures import ANCHOR


def heat_of(pixels: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] read back from a heatmap's colours.

    A pixel is half the grey part and half the jet colour, so (R - B, G - B) is half the
    colour's own (R - B, G - B), whatever the grey: a curve that never meets itself on the
    jet scale, so the nearest point on it gives the value.
    """
    values = np.linspace(0.0, 1.0, 256)
    jet = colormap(values).astype(np.float32) / 2
    curve = np.stack([jet[:, 0] - jet[:, 2], jet[:, 1] - jet[:, 2]], axis=1)
    seen = np.stack([pixels[..., 0] - pixels[..., 2], pixels[..., 1] - pixels[..., 2]], axis=-1)
    distance = ((seen[..., None, :] - curve) ** 2).sum(axis=-1)
    return values[distance.argmin(axis=-1)]


def map_pixels(png: Path, size: tuple[int, int]) -> np.ndarray:
    """The map of a heatmap PNG: the model input's box just left of the colour bar."""
    width, height = size
    with Image.open(png) as picture:
        right = picture.size[0] - BAR_PANEL
        return np.asarray(picture, dtype=np.float32)[
            HEADER : HEADER + height, right - width : right
        ]


def assert_hot_on_mask(png: Path, mask: Path, preprocess: Preprocess | None = None) -> None:
    """The hottest spot of a heatmap PNG lies on the defect, and its hottest percent of
    pixels overlaps the mask far beyond chance."""
    preprocess = preprocess or Preprocess()
    pixels = map_pixels(png, preprocess.size)
    heat = np.where((pixels == 255).all(axis=-1), 0.0, heat_of(pixels))  # not the outline
    with Image.open(mask) as image:
        truth = np.asarray(preprocess.geometry(image.convert("L"))) > 127
    # The scale tops out above the threshold: the hottest colour may cover more than the peak.
    assert (truth & (heat >= heat.max() - 1 / 64)).any(), "the hottest colour is off the defect"
    hot = heat >= np.percentile(heat, 99)
    assert (hot & truth).sum() / hot.sum() > 5 * truth.mean()


@pytest.fixture(scope="module")
def heatmaps(
    sample_model: Path, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """Heatmaps of three same-named images from different folders, given as relative
    paths, in one call."""
    folder = tmp_path_factory.mktemp("heatmaps") / "out"
    inputs = ["test/scratch/000.png", "test/good/000.png", "test/bent/000.png"]
    result = run_script(
        ROOT / "anomaly_detector.py",
        "--model",
        sample_model,
        "--heatmap",
        folder,
        *inputs,
        cwd=sample_dataset,
    )
    assert result.stderr == ""
    return folder, inputs


def test_one_png_per_input_in_a_tree_that_mirrors_the_inputs(
    heatmaps: tuple[Path, list[str]],
) -> None:
    folder, inputs = heatmaps
    names = sorted(str(path.relative_to(folder)) for path in folder.rglob("*.png"))
    assert names == sorted(f"{path}.png" for path in inputs)


def test_pngs_are_the_model_input_plain_and_with_its_map_and_a_colour_bar(
    heatmaps: tuple[Path, list[str]], sample_model: Path, sample_dataset: Path
) -> None:
    """The model's input without colours, then with its map, then the bar: its top the
    highest colour, its bottom the lowest."""
    folder, inputs = heatmaps
    crop = load_model(sample_model).settings["preprocess"]["crop"]
    for path in inputs:
        with Image.open(folder / heatmap_name(path)) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB"
            assert picture.size == (2 * crop + GAP + BAR_PANEL, crop + HEADER)
            pixels = np.asarray(picture)
        bar = pixels[HEADER:, 2 * crop + GAP + 4 + 6]  # down the bar's middle
        np.testing.assert_array_equal(bar[0], colormap(np.array(1.0)))  # top: the highest
        np.testing.assert_array_equal(bar[-1], colormap(np.array(0.0)))
        with Image.open(sample_dataset / path) as original:
            cut = Preprocess().geometry(original.convert("RGB"))
        np.testing.assert_array_equal(pixels[HEADER:, :crop], np.asarray(cut))  # uncoloured


@pytest.mark.parametrize("defect", ["scratch", "bent"])
def test_the_hot_region_overlaps_the_defect_mask(
    heatmaps: tuple[Path, list[str]], sample_dataset: Path, defect: str
) -> None:
    folder, _ = heatmaps
    png = folder / heatmap_name(f"test/{defect}/000.png")
    assert_hot_on_mask(png, sample_dataset / "ground_truth" / defect / "000_mask.png")


def test_a_good_image_stays_below_the_threshold_colour(heatmaps: tuple[Path, list[str]]) -> None:
    """The scale is anchored to the threshold: a good image below it shows none of the
    colours above it, and no outline."""
    folder, _ = heatmaps
    pixels = map_pixels(folder / heatmap_name("test/good/000.png"), Preprocess().size)
    at_threshold = (1 - ANCHOR[0]) / (ANCHOR[1] - ANCHOR[0])
    # Reading colours back is good to about 1/64.
    assert heat_of(pixels).max() < at_threshold + 1 / 64
    assert not (pixels == 255).all(axis=-1).any()  # no white outline


def test_names_are_distinct_visible_and_stay_in_the_folder() -> None:
    paths = [
        "a/b.png",
        "a%2Fb.png",
        "a_b.png",
        "/a/b.png",
        ".hidden.png",
        "..",
        "../up.png",
        "line\nbreak.png",
        os.fsdecode(b"caf\xe9.png"),  # Latin-1, not UTF-8
        "d\N{LATIN SMALL LETTER E WITH ACUTE}faut.png",
        "x" * 300 + ".png",
        "x" * 300 + "y.png",
    ]
    names = [heatmap_name(path) for path in paths]
    assert len(set(names)) == len(paths)
    for name in names:
        for part in name.split("/"):
            assert part and not part.startswith(".") and part.isprintable()
            assert len(part.encode()) <= MAX_NAME_BYTES
        assert name.endswith(".png")
    assert heatmap_name("./a/b.png") == names[0] == "a/b.png.png"
    assert names[9] == "d\N{LATIN SMALL LETTER E WITH ACUTE}faut.png.png"


def test_flagged_only_writes_the_maps_of_flagged_images(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    inputs = ["test/good/000.png", "test/good/001.png", "test/bent/000.png"]
    result = run_script(
        ROOT / "anomaly_detector.py",
        "--model",
        sample_model,
        "--heatmap",
        tmp_path,
        "--heatmap-flagged-only",
        *inputs,
        cwd=sample_dataset,
    )
    flagged = [line.split(",")[0] for line in result.stdout.splitlines() if line.endswith(",1")]
    assert flagged == ["test/bent/000.png"]  # the sample's defect, and only it
    assert sorted(tmp_path.rglob("*.png")) == [tmp_path / "test/bent/000.png.png"]


def test_heatmap_folder_that_cannot_be_written(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    image = sample_dataset / "test" / "good" / "000.png"
    result = run_script(
        "anomaly_detector.py", "--model", sample_model, "--heatmap", blocker, image, check=False
    )
    assert result.returncode == exit_codes.WRITE_ERROR and result.stdout == ""
    assert result.stderr.startswith(f"ERROR: cannot write heatmaps to {blocker}: ")


def test_make_model_writes_a_contact_sheet(sample_model: Path, sample_dataset: Path) -> None:
    sheet = sample_model.with_suffix(".contact_sheet.png")
    tests = len(list((sample_dataset / "test").rglob("*.png")))
    with Image.open(sheet) as picture:
        picture.verify()  # a complete, valid PNG
    with Image.open(sheet) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        width, height = picture.size
    rows = -(-tests // COLUMNS)
    assert width == COLUMNS * (2 * TILE + 8) and height > rows * TILE

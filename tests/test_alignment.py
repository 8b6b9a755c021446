"""Part alignment: the pose is found wherever and however the part lies, and the cut shows
the part the same way every time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import fit_efficientnet, mvtec_folder, run_script
from PIL import Image, ImageDraw

from ind_knn_ad.io.alignment import MARGIN, Box, cut, find_pose, measure_box, part_regions
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.report.heatmap import BAR_PANEL, GAP, HEADER

BACKGROUND = (200, 200, 200)
SHAFT = (100, 40)  # length, width in pixels
HEAD = (24, 70)  # a wider block at the heavy end, where the shaft starts


def part_image(
    angle_deg: float, centre: tuple[float, float], size: tuple[int, int] = (256, 256)
) -> Image.Image:
    """A dark screw-like part: a wide head and a long shaft, on a plain light background.
    `centre` is the middle of its length; the head points along -angle."""
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    total = HEAD[0] + SHAFT[0]

    def rectangle(start: float, length: float, width: float, shade: int) -> None:
        corners = [
            (start, -width / 2),
            (start + length, -width / 2),
            (start + length, width / 2),
            (start, width / 2),
        ]
        draw.polygon(
            [(centre[0] + u * cos - v * sin, centre[1] + u * sin + v * cos) for u, v in corners],
            fill=(shade, shade, shade),
        )

    rectangle(-total / 2, HEAD[0], HEAD[1], 60)
    rectangle(-total / 2 + HEAD[0], SHAFT[0], SHAFT[1], 90)
    return image


@pytest.mark.parametrize(
    ("angle", "centre"), [(0, (128, 128)), (37, (110, 140)), (-100, (140, 120)), (170, (128, 128))]
)
def test_pose_follows_the_part(angle: float, centre: tuple[float, float]) -> None:
    pose = find_pose(part_image(angle, centre))
    turned = math.degrees(pose.angle) - angle
    assert abs((turned + 180) % 360 - 180) < 3  # and the head end is the one on the left
    assert math.dist(pose.centre, centre) < 3
    assert pose.length == pytest.approx((HEAD[0] + SHAFT[0]) / 256, rel=0.05)
    assert pose.breadth == pytest.approx(HEAD[1] / 256, rel=0.1)
    assert pose.background == BACKGROUND


def test_cut_shows_the_part_the_same_way_wherever_it_lies() -> None:
    box = Box(0.6, 0.35)
    cuts = [
        np.asarray(cut(part_image(a, c), find_pose(part_image(a, c)), box, 256, Image.BICUBIC))
        for a, c in [(0, (128, 128)), (63, (100, 150)), (200, (150, 110))]
    ]
    assert cuts[0].shape == (round(0.35 * 256), round(0.6 * 256), 3)
    for other in cuts[1:]:
        differs = np.abs(cuts[0].astype(int) - other.astype(int)).max(axis=2) > 60
        assert differs.mean() < 0.02  # only edge pixels differ
    grey = cuts[0].mean(axis=2)
    left, right = grey[:, : grey.shape[1] // 2], grey[:, grey.shape[1] // 2 :]
    assert (left < 75).sum() > 10 * (right < 75).sum()  # the (darker) head is on the left


def test_dust_does_not_move_the_pose() -> None:
    image = part_image(20, (128, 128))
    clean = find_pose(image)
    ImageDraw.Draw(image).ellipse((10, 10, 16, 16), fill=(50, 50, 50))
    dusty = find_pose(image)
    assert math.dist(clean.centre, dusty.centre) < 0.5
    assert dusty.angle == pytest.approx(clean.angle, abs=0.01)


def test_wide_frame_and_blank_frame() -> None:
    wide = find_pose(part_image(10, (250, 100), size=(400, 200)))
    assert math.dist(wide.centre, (250, 100)) < 3
    assert wide.length == pytest.approx((HEAD[0] + SHAFT[0]) / 200, rel=0.05)
    blank = Image.new("RGB", (64, 48), BACKGROUND)
    pose = find_pose(blank)
    assert (pose.length, pose.centre, pose.angle) == (0.0, (32.0, 24.0), 0.0)
    out = cut(blank, pose, Box(1.0, 0.5), 48, Image.BICUBIC)
    assert out.size == (48, 24)
    assert (np.asarray(out) == BACKGROUND).all()


def test_masks_follow_the_photo() -> None:
    photo = part_image(45, (128, 128))
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 127, 255), fill=255)  # the left half of the frame
    preprocess = Preprocess(256, 256, align=Box(0.8, 0.4))
    truth = np.asarray(preprocess.geometry(mask, preprocess.prepare(photo).pose))
    assert truth.shape == (round(0.4 * 256), round(0.8 * 256))
    assert set(np.unique(truth)) <= {0, 255}  # nearest neighbour: still a mask
    # The head points up-left, into the masked half: the cut's left end is masked.
    assert truth[:, :20].mean() > 250 and truth[:, -20:].mean() < 5


def test_measure_box(tmp_path: Path) -> None:
    for index, angle in enumerate((0, 90, 135)):
        part_image(angle, (128, 128)).save(tmp_path / f"{index}.png")
    box = measure_box(sorted(tmp_path.glob("*.png")))
    longest = max(find_pose(Image.open(path).convert("RGB")).length for path in tmp_path.iterdir())
    assert box.length == pytest.approx(longest * (1 + MARGIN), abs=1e-3)
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.new("RGB", (32, 32), BACKGROUND).save(blank / "0.png")
    with pytest.raises(ValueError, match="no part found"):
        measure_box([blank / "0.png"])


def test_preprocess_round_trip() -> None:
    aligned = Preprocess(512, 512, align=Box(1.0, 0.3))
    assert aligned.size == (512, 154)
    assert Preprocess.from_dict(aligned.to_dict()) == aligned
    assert "align" not in Preprocess().to_dict()  # what version 1 model files hold
    assert Preprocess.from_dict(Preprocess().to_dict()) == Preprocess()


def test_real_screws_fit_their_box() -> None:
    """Every screw_512 training image: the cut holds the whole screw, head on the left."""
    paths = sorted((mvtec_folder("screw_512") / "train" / "good").glob("*.png"))
    preprocess = Preprocess(256, 256, align=measure_box(paths))
    for path in paths[::8]:
        grey = np.asarray(preprocess.geometry(Image.open(path).convert("RGB")).convert("L"))
        part = grey < 0.8 * np.median(grey)
        columns = np.nonzero(part.mean(axis=0) > 0.05)[0]
        assert columns.min() > 2 and columns.max() < part.shape[1] - 3, path.name
        half = part.shape[1] // 2
        # The head is the widest place: many part pixels per column on the left.
        assert part[:, :half].sum() > part[:, half:].sum(), path.name


def test_part_regions_from_cuts_equal_those_from_the_network_inputs() -> None:
    """Real screws cut with a measured box: the cut's rounded channel mean is exactly the
    grey that un-normalising the float32 network input gave, so the regions are the same.
    The mean of three integers ends in .0, .33 or .67, far from a rounding tie."""
    folder = mvtec_folder("screw_512")
    train = sorted((folder / "train" / "good").glob("*.png"))
    preprocess = Preprocess(512, 512, align=measure_box(train[::4]))
    paths = train[::16] + sorted((folder / "test").rglob("*.png"))[::8]
    prepared = [preprocess.prepare(Image.open(path)) for path in paths]
    cuts = np.stack([p.cut for p in prepared])
    arrays = np.stack([p.array for p in prepared])
    width, height = preprocess.size
    grid = (height // 8, width // 8)
    # The formula part_regions used on the network inputs before it took the cuts.
    scale = np.asarray(preprocess.std, np.float32)[:, None, None] * 255.0
    offset = np.asarray(preprocess.mean, np.float32)[:, None, None] * 255.0
    means = (arrays * scale + offset).mean(axis=1)
    greys = np.clip(means + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(means * 3 - np.rint(means * 3)).max() < 0.01  # thirds, up to float error
    np.testing.assert_array_equal(greys, (cuts.sum(axis=-1, dtype=np.uint16) + 1) // 3)
    from_inputs = part_regions(np.repeat(greys[..., None], 3, axis=-1), grid)  # mean = grey
    from_cuts = part_regions(cuts, grid)
    np.testing.assert_array_equal(from_cuts, from_inputs)
    assert 0.1 < from_cuts.mean() < 0.9  # parts found, not whole cuts


@pytest.fixture(scope="module")
def aligned_model(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("aligned") / "aligned.safetensors"
    result = fit_efficientnet(sample_dataset, model, "--align")
    assert "Aligned cut:" in result.stderr
    assert result.stdout.rstrip().endswith("Model file creation is complete.")
    return model


def test_aligned_model_end_to_end(
    aligned_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """An --align fit records its box in a version 2 file, flags the sample defects, and
    scores one file as it scores the same file in a batch; heatmaps show the cut."""
    settings = load_model(aligned_model).settings
    assert settings["format_version"] == 2
    preprocess = Preprocess.from_dict(settings["preprocess"])
    assert preprocess.align is not None
    images = sorted((sample_dataset / "test").rglob("*.png"))
    batch = run_script("anomaly_detector.py", "--model", aligned_model, *images).stdout
    lines = batch.splitlines()
    assert len(lines) == len(images)
    for line, image in zip(lines, images, strict=True):
        assert line.endswith(",1" if image.parent.name != "good" else ",0"), line
    single = run_script("anomaly_detector.py", "--model", aligned_model, images[0]).stdout
    assert single.splitlines() == lines[:1]
    heatmaps = tmp_path / "maps"
    run_script("anomaly_detector.py", "--model", aligned_model, "--heatmap", heatmaps, images[0])
    width, height = preprocess.size
    with Image.open(next(heatmaps.rglob("*.png"))) as picture:  # the cut, plain and mapped
        assert picture.size == (2 * width + GAP + BAR_PANEL, height + HEADER)


def test_crop_does_not_apply_with_align(sample_dataset: Path) -> None:
    result = run_script(
        "make_model.py", "--data-dir", sample_dataset, "--align", "--crop", "200", check=False
    )
    assert result.returncode == 2
    assert "--crop does not apply with --align" in result.stderr


def test_align_without_any_part_stops_the_fit(tmp_path: Path) -> None:
    folder = tmp_path / "blank"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), BACKGROUND).save(folder / f"{index}.png")
    result = run_script(
        "make_model.py", "--data-dir", folder, "--align", "--model", tmp_path / "m", check=False
    )
    assert result.returncode == 4
    [line] = result.stderr.strip().splitlines()
    assert "no part found on a plain background" in line and str(folder) in line
    assert not (tmp_path / "m").exists()


def test_part_regions_cover_the_part_and_its_edge() -> None:
    """The patches scored on an aligned cut: on the part and one patch around it."""
    preprocess = Preprocess(256, 256, align=Box(0.8, 0.4))
    photo = part_image(30, (128, 128))
    cut_image = preprocess.geometry(photo)
    cuts = np.asarray(cut_image)[None]
    grid = (cuts.shape[1] // 8, cuts.shape[2] // 8)
    [region] = part_regions(cuts, grid)
    part = np.asarray(cut_image.convert("L")) < 120
    cells = part[: grid[0] * 8, : grid[1] * 8].reshape(grid[0], 8, grid[1], 8).any(axis=(1, 3))
    assert region[cells].all()  # every patch with part pixels counts
    assert 0.3 < region.mean() < 0.9  # and not the whole cut
    assert not region[0, 0] and not region[-1, -1]  # the box's corners are background
    blank = preprocess.prepare(Image.new("RGB", (64, 64), BACKGROUND)).cut
    assert part_regions(blank[None], grid).all()

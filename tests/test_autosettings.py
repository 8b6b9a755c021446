"""Settings chosen from good images: alignment follows how the parts lie, explicit settings
win, and the choice keeps its evidence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import mvtec_folder
from PIL import Image, ImageDraw

from ind_knn_ad.calibration.synthetic import DEFECTS
from ind_knn_ad.calibration.threshold import FEW
from ind_knn_ad.config import FitConfig
from ind_knn_ad.errors import ConfigError
from ind_knn_ad.io.datasets import list_images
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.search.coreset import FULL_BANK_PATCHES, coreset_size
from ind_knn_ad.tuning import autosettings
from ind_knn_ad.tuning.autosettings import (
    GAIN,
    LARGER_FRACTION,
    LARGER_FROM,
    SMALL_CAUGHT,
    TIE,
    _candidates,
    _larger_input,
    _pick,
    _resolution,
    choose,
)
from ind_knn_ad.tuning.pose import TURNED_DEGREES, PoseSpread, pose_spread
from ind_knn_ad.tuning.validation import Candidate, Trial

BACKGROUND = (210, 210, 210)


def bar_image(angle_deg: float, centre: tuple[float, float], size: int = 128) -> Image.Image:
    """A dark bar, 4 times as long as wide, on a plain light background."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(-40, -10), (40, -10), (40, 10), (-40, 10)]
    ImageDraw.Draw(image).polygon(
        [(centre[0] + u * cos - v * sin, centre[1] + u * sin + v * cos) for u, v in corners],
        fill=(70, 70, 70),
    )
    return image


def disc_image(
    centre: tuple[float, float], rng: np.random.Generator, size: int = 128
) -> Image.Image:
    """A near-round part (a slightly squashed disc at a random angle)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    radius = 30
    squash = rng.uniform(0.92, 1.0)
    angle = rng.uniform(0, math.pi)
    points = [
        (
            centre[0]
            + radius * math.cos(t) * math.cos(angle)
            - squash * radius * math.sin(t) * math.sin(angle),
            centre[1]
            + radius * math.cos(t) * math.sin(angle)
            + squash * radius * math.sin(t) * math.cos(angle),
        )
        for t in np.linspace(0, 2 * math.pi, 60, endpoint=False)
    ]
    ImageDraw.Draw(image).polygon(points, fill=(90, 60, 40))
    return image


def save(images: list[Image.Image], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def test_parts_at_any_angle_are_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        bar_image(rng.uniform(0, 360), (64 + rng.uniform(-8, 8), 64 + rng.uniform(-8, 8)))
        for _ in range(12)
    ]
    pose = pose_spread(save(images, tmp_path))
    assert pose.elongation > 3
    assert pose.axis_spread is not None and pose.axis_spread > 2 * TURNED_DEGREES
    assert pose.varied and pose.to_dict()["align"] is True


def test_parts_in_one_pose_are_not_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [
        bar_image(30 + rng.uniform(-2, 2), (64 + rng.uniform(-2, 2), 64 + rng.uniform(-2, 2)))
        for _ in range(12)
    ]
    pose = pose_spread(save(images, tmp_path))
    assert pose.axis_spread is not None and pose.axis_spread < 5
    assert not pose.varied
    assert "one pose" in pose.reason()


def test_round_parts_have_no_axis(tmp_path: Path) -> None:
    """A near-round part's long axis is noise: it is not counted, so turning does not align."""
    rng = np.random.default_rng(2)
    pose = pose_spread(save([disc_image((64, 64), rng) for _ in range(12)], tmp_path))
    assert pose.axis_spread is None
    assert not pose.varied


def test_parts_that_move_are_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = [(rng.uniform(35, 93), rng.uniform(35, 93)) for _ in range(12)]
    pose = pose_spread(save([disc_image(centre, rng, 160) for centre in centres], tmp_path))
    assert pose.moved and pose.varied


def test_a_texture_is_never_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(8)]
    pose = pose_spread(save(images, tmp_path))
    assert not pose.plain
    assert not pose.varied


def test_explicit_settings_win_and_nothing_is_searched(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    paths = save([bar_image(rng.uniform(0, 360), (64, 64)) for _ in range(4)], tmp_path)
    config = FitConfig(
        backbone="efficientnet_lite0",
        image_score="reweighted",
        coreset=0.25,
        preprocess=Preprocess(240, 200),
        layers=(1, 2),
    )
    given = {"backbone", "image_score", "coreset", "resize", "crop", "layers"}
    choice = choose(config, paths, given)
    assert choice.config == config
    assert choice.trials == [] and choice.chosen is None and choice.pose is None
    recorded = sorted(given - {"coreset"} | {"coreset_fraction"})  # the model file's name
    assert choice.to_dict()["given"] == recorded


def test_given_alignment_measures_the_box(tmp_path: Path) -> None:
    """--align on parts in one pose: the user's word wins over the pose statistic."""
    paths = save([bar_image(30, (64, 64)) for _ in range(4)], tmp_path)
    config = FitConfig(backbone="efficientnet_lite0", image_score="top10", coreset=0.01)
    choice = choose(config, paths, {"backbone", "image_score", "coreset", "align"})
    assert choice.config.preprocess.align is not None
    assert choice.config.preprocess.resize == 512


def test_a_given_crop_is_not_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    paths = save([bar_image(rng.uniform(0, 360), (64, 64)) for _ in range(4)], tmp_path)
    config = FitConfig(backbone="efficientnet_lite0", preprocess=Preprocess(256, 200))
    choice = choose(config, paths, {"backbone", "image_score", "crop"})
    assert choice.config.preprocess == Preprocess(256, 200)
    assert "crop given" in choice.reason


def test_given_augmentation_is_not_aligned(tmp_path: Path) -> None:
    """Turned copies are asked for where the parts turn: the choice keeps the centre crop
    (alignment would undo the turns the copies stand for) and carries the views on."""
    rng = np.random.default_rng(8)
    paths = save([bar_image(rng.uniform(0, 360), (64, 64)) for _ in range(4)], tmp_path)
    config = FitConfig(backbone="efficientnet_lite0", augment="rotations")
    given = {"backbone", "image_score", "augment"}
    choice = choose(config, paths, given)
    assert choice.config.preprocess == Preprocess()
    assert choice.config.augment == "rotations"
    assert "augmentation given: not aligned" in choice.reason and choice.pose is None
    with pytest.raises(ConfigError, match="does not apply to an aligned part") as raised:
        choose(config, paths, given | {"align"})
    assert raised.value.setting == "augment"


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be given"):
        choose(FitConfig(), [tmp_path / "x.png"], {"threshold"})


def trial(name: str, caught: float, auroc: float = 0.9) -> Trial:
    return Trial(Candidate(name, "max", 0.1), Preprocess(), caught, caught / 2, auroc, 0.1)


def test_a_cheaper_candidate_wins_a_near_tie() -> None:
    cheap, best = trial("cheap", 0.70), trial("best", 0.70 + TIE / 2)
    assert _pick([cheap, best])[0] is cheap
    far = trial("far", 0.70 + 2 * TIE)
    chosen, why = _pick([cheap, far])
    assert chosen is far and "far" in why


def test_the_choice_records_every_candidate(tmp_path: Path) -> None:
    """Two candidates (the image scores) on one backbone: one feature pass, both scored."""
    rng = np.random.default_rng(6)
    paths = save([bar_image(30 + rng.uniform(-2, 2), (64, 64)) for _ in range(5)], tmp_path)
    config = FitConfig(backbone="efficientnet_lite0", preprocess=Preprocess(64, 64))
    choice = choose(config, paths, {"backbone", "resize", "crop"}, device="cpu")
    assert [t.candidate.image_score for t in choice.trials] == ["max", "top10"]
    assert choice.chosen in choice.trials
    assert choice.config.image_score == choice.chosen.candidate.image_score
    record = json.loads(json.dumps(choice.to_dict()))
    assert [c["image_score"] for c in record["candidates"]] == ["max", "top10"]
    assert record["align"] is False and record["validation"]["images"] == 5
    for trial in choice.trials:  # every kind is made equally often, so rates average out
        assert set(trial.by_kind) == set(DEFECTS)
        assert trial.caught == pytest.approx(np.mean(list(trial.by_kind.values())))
    assert choice.table().row_count == 2


@pytest.mark.parametrize(("name", "aligned"), [("screw_512", True), ("transistor_reduced", False)])
def test_real_parts(name: str, aligned: bool) -> None:
    """Screws lie at any angle; transistors lie in one pose, and turning one is a defect."""
    paths = list_images(mvtec_folder(name) / "train" / "good")
    assert pose_spread(paths).varied is aligned


class OneTrial:
    """A search that answers with one prepared trial, and counts its calls."""

    def __init__(self, trial: Trial, images: int = 200) -> None:
        self.trial, self.asked, self.images = trial, [], images

    def best(self, base: FitConfig, candidates: list[Candidate]) -> tuple[Trial, str]:
        self.asked.append((base.preprocess, candidates))
        return self.trial, f"{self.trial.candidate.name} catches {self.trial.caught:.0%}"


def scored(caught: float, small: float, preprocess: Preprocess) -> Trial:
    return Trial(Candidate("efficientnet_lite0", "max", 0.01), preprocess, caught, small, 0.9, 1)


LARGE = Preprocess(512, 512)


def test_an_input_that_sees_small_defects_is_kept() -> None:
    """Most small defects caught at the base input: the larger one is not even tried."""
    search = OneTrial(scored(0.9, 0.9, LARGE))
    base = scored(0.7, SMALL_CAUGHT, Preprocess())
    chosen, why = _resolution(search, FitConfig(), frozenset(), base, "base", LARGE)
    assert chosen is base and search.asked == [] and "input kept" in why


@pytest.mark.parametrize(("gain", "larger_wins"), [(GAIN, True), (GAIN / 2, False)])
def test_a_larger_input_must_catch_more(gain: float, larger_wins: bool) -> None:
    """Small defects missed at the base input: the larger input is validated with the
    base's backbone at the larger bank fraction, and wins only by more than a tie."""
    base = scored(0.3, 0.05, Preprocess())
    search = OneTrial(scored(0.3 + gain, 0.4, LARGE))
    chosen, why = _resolution(search, FitConfig(), frozenset(), base, "base", LARGE)
    assert (chosen is search.trial) is larger_wins
    assert "5% of small defects caught at 256/224" in why
    [(asked, candidates)] = search.asked
    assert asked == LARGE
    assert {c.backbone for c in candidates} == {"efficientnet_lite0"}
    assert {c.coreset_fraction for c in candidates} == {LARGER_FRACTION}


def test_few_images_keep_a_full_bank() -> None:
    """A share of a few images' patches would be a bank of a few dozen rows: where the
    images hold FULL_BANK_PATCHES patches or fewer at the input, only the default rule
    (every patch) is validated; below FEW images, the share keeping FULL_BANK_PATCHES
    rows; from FEW images on, the searched shares. For the larger input alike."""
    per_image = 64 * 64  # 512 x 512 px at stride 8
    few = FULL_BANK_PATCHES // per_image
    expected = {few: {None}, few + 1: {0.8}, FEW: {0.01, 0.1}}
    for images, fractions in expected.items():
        candidates = _candidates(FitConfig(), frozenset(), LARGE, images)
        assert {c.coreset_fraction for c in candidates} == fractions
    assert coreset_size(few * per_image, None) == few * per_image
    assert coreset_size((few + 1) * per_image, 0.8) == FULL_BANK_PATCHES
    given = _candidates(FitConfig(coreset=0.5), {"coreset"}, LARGE, few)
    assert {c.coreset_fraction for c in given} == {0.5}
    base = scored(0.3, 0.05, Preprocess())
    for images, fraction in ((few, None), (few + 1, 0.8), (FEW, LARGER_FRACTION)):
        search = OneTrial(scored(0.9, 0.9, LARGE), images)
        _resolution(search, FitConfig(), frozenset(), base, "base", LARGE)
        [(_, candidates)] = search.asked
        assert {c.coreset_fraction for c in candidates} == {fraction}


def pose(side: int) -> PoseSpread:
    return PoseSpread(32, 32, 1.0, None, 0.0, 0.5, side)


@pytest.mark.parametrize(
    ("side", "given", "augment", "expected"),
    [
        (1024, set(), "none", LARGE),
        (460, set(), "none", Preprocess(460, 460)),
        (LARGER_FROM - 1, set(), "none", None),  # the photos hold no more detail
        (1024, {"resize"}, "none", None),  # the user's size wins
        (1024, {"crop"}, "none", None),
        (1024, set(), "rotations", None),  # turned copies at 4 times the pixels: not tried
    ],
)
def test_which_photos_get_a_larger_input(
    side: int, given: set[str], augment: str, expected: Preprocess | None
) -> None:
    config = FitConfig(augment=augment)
    assert _larger_input(config, given, pose(side), Preprocess()) == expected


def woven(seed: int, side: int = 448) -> Image.Image:
    """A fine woven texture with a little noise: no part, so never aligned."""
    y, x = np.mgrid[:side, :side]
    texture = 128 + 60 * np.sin(2 * np.pi * x / 6) * np.sin(2 * np.pi * y / 6)
    noisy = texture + np.random.default_rng(seed).normal(0, 8, texture.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert("RGB")


GIVEN_BUT_INPUT = {"backbone", "image_score", "coreset"}
TEXTURE_CONFIG = FitConfig(backbone="efficientnet_lite0", image_score="max", coreset=0.05)


def test_the_larger_input_is_validated_recorded_and_fitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the base input made to look blind (every catch rate under the bar) and any gain
    enough, the larger input's trial is validated on real features, chosen, recorded with
    its input, and is what the fit gets; a quick choice never tries it."""
    paths = save([woven(seed) for seed in range(6)], tmp_path)
    monkeypatch.setattr(autosettings, "SMALL_CAUGHT", 1.01)
    monkeypatch.setattr(autosettings, "GAIN", -1.0)
    choice = choose(TEXTURE_CONFIG, paths, GIVEN_BUT_INPUT, device="cpu")
    assert [t.preprocess.label for t in choice.trials] == ["256/224", "448/448"]
    assert choice.chosen is choice.trials[1]
    assert choice.config.preprocess == Preprocess(448, 448)
    record = json.loads(json.dumps(choice.to_dict()))
    assert [c["input"] for c in record["candidates"]] == ["256/224", "448/448"]
    assert record["validation"]["larger"]["448/448"]["defect_sizes_px"] == [18, 45]
    assert "so 448/448 tried" in choice.reason
    quick = choose(TEXTURE_CONFIG, paths, GIVEN_BUT_INPUT, device="cpu", larger=False)
    assert quick.trials == [] and quick.config.preprocess == Preprocess()

"""Orientation augmentation (`make_model.py --augment`): the views are exact turns and
flips, the training features hold each image and then its views, the coreset rule counts
the views' patches, and a mirrored part, flagged without, is not flagged with
flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fit_efficientnet, run_script
from PIL import Image, ImageDraw

from ind_knn_ad.features.augment import VIEW_SETS, views_of, with_views
from ind_knn_ad.features.extractor import extract_features
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import load_model

SIDE = 96  # the flag images' side, and the network input's (no resize, no crop)


def _symmetries(plane: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a square (H, W) plane, the identity first."""
    return [np.rot90(p, k) for p in (plane, plane[:, ::-1]) for k in range(4)]


def test_views_are_the_turns_and_flips_of_the_square() -> None:
    """Each view is one symmetry of the square, the same in every image and channel."""
    batch = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)  # distinct pixels
    found = {}
    for name, views in VIEW_SETS.items():
        found[name] = []
        for view in views:
            turned = view(batch)
            first = _symmetries(batch[0, 0])
            [index] = [k for k, plane in enumerate(first) if np.array_equal(turned[0, 0], plane)]
            for image, channel in np.ndindex(2, 3):
                expected = _symmetries(batch[image, channel])[index]
                assert np.array_equal(turned[image, channel], expected)
            found[name].append(index)
    # Index k: k quarter turns; 4 + k: the mirror image turned k times (6: upside down).
    assert found == {
        "none": [],
        "flips": [4, 6],
        "rotations": [1, 2, 3],
        "dihedral": [1, 2, 3, 4, 5, 6, 7],
    }


def test_turning_a_normalised_input_is_normalising_the_turned_cut() -> None:
    cut = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    preprocess = Preprocess(6, 6)
    for view in VIEW_SETS["dihedral"]:
        turned_cut = view(cut.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        expected = preprocess.normalise(np.ascontiguousarray(turned_cut))
        assert np.array_equal(view(preprocess.normalise(cut)[None])[0], expected)


def test_rotations_need_a_square_input() -> None:
    wide = np.zeros((1, 3, 4, 6), dtype=np.float32)
    for name in ("rotations", "dihedral"):
        with pytest.raises(ValueError, match="rotations need a square input, not 6x4"):
            with_views(wide, views_of(name))
    assert with_views(wide, views_of("flips")).shape == (3, 3, 4, 6)
    with pytest.raises(ValueError, match="augment must be one of none, flips"):
        views_of("sideways")


def test_each_image_comes_before_its_views(tmp_path: Path) -> None:
    """With an extractor that gives the input itself as features, each image's row holds
    its own pixels, then each view's, whatever the batch size."""
    rng = np.random.default_rng(1)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[-1])
    preprocess = Preprocess(8, 8)

    def identity(arrays: np.ndarray) -> np.ndarray:
        return arrays.copy()

    plain = extract_features(identity, paths, preprocess)
    assert plain.features.shape == (3, 64, 3) and plain.views == 1
    for batch_size in (1, 16):
        train = extract_features(identity, paths, preprocess, batch_size, augment="dihedral")
        assert train.features.shape == (3, 8 * 64, 3) and train.views == 8
        for image, path in enumerate(paths):
            own = preprocess.prepare_file(path).array[None]
            copies = [own, *(view(own) for view in VIEW_SETS["dihedral"])]
            expected = np.concatenate([c[0].transpose(1, 2, 0).reshape(-1, 3) for c in copies])
            assert np.array_equal(train.features[image], expected)


# --- through the scripts: a part with a handedness ------------------------------------------


def flag_image(rng: np.random.Generator, mirrored: bool = False) -> Image.Image:
    """A flag on a pole, pointing right (left when `mirrored`), shifted a few pixels, on a
    plain noisy background: no turn or flip of it but the identity looks the same."""
    background = rng.normal(200, 4, (SIDE, SIDE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    x, y = 30 + rng.integers(-3, 4), 18 + rng.integers(-3, 4)
    draw = ImageDraw.Draw(image)
    draw.rectangle([x, y, x + 7, y + 60], fill=(60, 60, 70))
    draw.polygon([(x + 7, y), (x + 40, y + 14), (x + 7, y + 28)], fill=(150, 40, 40))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else image


@pytest.fixture(scope="module")
def flags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 good flags, 3 upright and 3 mirrored probes, and a model fitted on the flags with
    each of `none` and `flips`."""
    root = tmp_path_factory.mktemp("flags")
    rng = np.random.default_rng(0)
    good = root / "data" / "train" / "good"
    good.mkdir(parents=True)
    for index in range(8):
        flag_image(rng).save(good / f"{index:03d}.png")
    (root / "probes").mkdir()
    for index in range(3):
        flag_image(rng).save(root / "probes" / f"upright_{index}.png")
        flag_image(rng, mirrored=True).save(root / "probes" / f"mirrored_{index}.png")
    found = {"data": root / "data", "probes": root / "probes"}
    size = ["--image-size", str(SIDE), "--crop", str(SIDE)]
    for augment in ("none", "flips"):
        found[augment] = root / f"{augment}.safetensors"
        result = fit_efficientnet(root / "data", found[augment], *size, "--augment", augment)
        found[f"{augment} stderr"] = result.stderr
    return found


@pytest.mark.slow
def test_flips_keep_every_patch_and_a_finite_threshold(flags: dict[str, Path]) -> None:
    """Without --coreset, every patch up to 16,384 is kept, the views' patches included."""
    plain, flipped = load_model(flags["none"]), load_model(flags["flips"])
    assert "augment" not in plain.settings  # a default fit's settings are as before
    assert flipped.settings["augment"] == "flips"
    assert plain.tensors["memory_bank"].shape[0] == 8 * 12 * 12
    assert flipped.tensors["memory_bank"].shape[0] == 3 * 8 * 12 * 12
    assert flipped.settings["coreset"]["total_patches"] == 3 * 8 * 12 * 12
    assert np.isfinite(flipped.threshold) and flipped.settings["threshold"]["holdout"]["std"] > 0
    summary = " ".join(flags["flips stderr"].split())
    assert "Memory bank: 3456 of 3456 patches (images and their views, --augment flips)" in summary


# Issue 26, item 9: the README's coreset rule ("unset: every patch up to 16,384, else 10%;
# 1.0 keeps all") holds with --augment; the bank kept as many rows as without views (512 of
# 4,096 at --coreset 1.0, 1,280 of 5,120 unset).
BANK_CASES = [  # options, patches kept, of how many (8 flags of 12x12 patches, and views)
    (["--augment", "flips", "--coreset", "1.0"], 3456, 3456),
    (["--augment", "rotations"], 4608, 4608),
    (["--augment", "rotations", "--coreset", "0.25"], 1152, 4608),
]


@pytest.mark.slow
@pytest.mark.parametrize(("options", "kept", "total"), BANK_CASES, ids=["1.0", "unset", "0.25"])
def test_the_coreset_rule_counts_the_views(
    flags: dict[str, Path], tmp_path: Path, options: list[str], kept: int, total: int
) -> None:
    model = tmp_path / "m.safetensors"
    size = ["--image-size", str(SIDE), "--crop", str(SIDE), "--threshold", "1"]
    result = fit_efficientnet(flags["data"], model, *size, *options)
    assert f"Memory bank: {kept} of {total} patches" in " ".join(result.stderr.split())
    assert load_model(model).tensors["memory_bank"].shape[0] == kept


@pytest.mark.slow
def test_a_mirrored_part_is_no_longer_flagged(flags: dict[str, Path]) -> None:
    probes = sorted(flags["probes"].iterdir())
    scores, flagged = {}, {}
    for augment in ("none", "flips"):
        result = run_script("anomaly_detector.py", "--model", flags[augment], *probes)
        rows = [line.split(",") for line in result.stdout.splitlines()]
        scores[augment] = {Path(row[0]).stem: float(row[1]) for row in rows}
        flagged[augment] = {Path(row[0]).stem for row in rows if row[2] == "1"}
    mirrored = {probe.stem for probe in probes if probe.stem.startswith("mirrored")}
    assert flagged == {"none": mirrored, "flips": set()}
    for name in mirrored:
        assert scores["flips"][name] < scores["none"][name]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--align"],
            "--augment does not apply with --align: an aligned part is already turned to one pose",
        ),
        (["--method", "padim"], "--augment is for --method patchcore only"),
        (["--method", "spade"], "--augment is for --method patchcore only"),
    ],
    ids=["align", "padim", "spade"],
)
def test_augment_where_it_cannot_apply_is_a_usage_error(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = run_script(
        "make_model.py",
        "--data-dir",
        tmp_path,
        "--model",
        tmp_path / "m.safetensors",
        "--augment",
        "flips",
        *options,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"make_model.py: error: {message}"
    assert "Traceback" not in result.stderr and "Running" not in result.stdout

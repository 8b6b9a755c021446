"""The synthetic sample dataset: MVTec layout, masks that mark real differences, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ind_knn_ad.io import sample_data
from ind_knn_ad.io.sample_data import DEFECT_KINDS, generate_sample_dataset, main

SIZE = 256


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float32)


def _digests(root: Path) -> dict[str, str]:
    """Relative path to SHA-256 of every file, so two trees compare byte for byte."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def train_images(dataset: Path) -> np.ndarray:
    return np.stack([_pixels(p) for p in sorted((dataset / "train" / "good").glob("*.png"))])


def test_layout_counts_sizes_and_modes(dataset: Path) -> None:
    assert dataset.name == "metal_nut_sample"
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["metal_nut_sample"]
    expected = {"train/good": 40, "test/good": 4} | {f"test/{kind}": 3 for kind in DEFECT_KINDS}
    folders = {str(p.parent.relative_to(dataset)) for p in dataset.rglob("*.png")}
    assert folders == set(expected) | {f"ground_truth/{kind}" for kind in DEFECT_KINDS}
    for folder, count in expected.items():
        names = sorted(p.name for p in (dataset / folder).iterdir())
        assert names == [f"{i:03d}.png" for i in range(count)]
        for name in names:
            with Image.open(dataset / folder / name) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
    for kind in DEFECT_KINDS:
        names = sorted(p.name for p in (dataset / "ground_truth" / kind).iterdir())
        assert names == [f"{i:03d}_mask.png" for i in range(3)]
        for name in names:
            with Image.open(dataset / "ground_truth" / kind / name) as mask:
                assert (mask.mode, mask.size) == ("L", (SIZE, SIZE))
                assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_masks_mark_where_the_image_differs_from_good_parts(
    dataset: Path, train_images: np.ndarray, kind: str
) -> None:
    typical = train_images.mean(axis=0)
    for index in range(3):
        image = _pixels(dataset / "test" / kind / f"{index:03d}.png")
        mask = _pixels(dataset / "ground_truth" / kind / f"{index:03d}_mask.png") > 127
        assert 50 < mask.sum() < 0.5 * mask.size
        difference = np.abs(image - typical).sum(axis=-1)
        assert difference[mask].mean() > 2.5 * difference[~mask].mean()
        assert difference[mask].mean() > 50.0


def test_color_defects_are_saturated_where_good_parts_are_grey(
    dataset: Path, train_images: np.ndarray
) -> None:
    assert np.ptp(train_images, axis=-1).max() < 40
    for index in range(3):
        image = _pixels(dataset / "test" / "color" / f"{index:03d}.png")
        mask = _pixels(dataset / "ground_truth" / "color" / f"{index:03d}_mask.png") > 127
        assert np.ptp(image, axis=-1)[mask].mean() > 80


def test_flip_is_a_real_defect_because_the_part_is_chiral(
    dataset: Path, train_images: np.ndarray
) -> None:
    def nearest_train_distance(path: Path) -> float:
        return float(np.abs(train_images - _pixels(path)).mean(axis=(1, 2, 3)).min())

    good = [nearest_train_distance(p) for p in (dataset / "test" / "good").glob("*.png")]
    flipped = [nearest_train_distance(p) for p in (dataset / "test" / "flip").glob("*.png")]
    assert min(flipped) > 2.0 * max(good)


def test_good_images_vary_in_pose(train_images: np.ndarray) -> None:
    """Jitter, not just noise: the part's silhouette moves a few pixels between images."""
    part = train_images.mean(axis=-1) > 30
    coords = np.arange(SIZE) + 0.5
    area = part.sum(axis=(1, 2))
    centres_x = (part.sum(axis=1) * coords).sum(axis=1) / area
    centres_y = (part.sum(axis=2) * coords).sum(axis=1) / area
    for centres in (centres_x, centres_y):
        assert np.abs(centres - SIZE / 2).max() < 6
        assert centres.std() > 0.5


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    counts = {"n_train": 2, "n_test_good": 1, "n_test_defect": 1}
    first = _digests(generate_sample_dataset(tmp_path / "a", seed=7, **counts))
    second = _digests(generate_sample_dataset(tmp_path / "b", seed=7, **counts))
    other = _digests(generate_sample_dataset(tmp_path / "c", seed=8, **counts))
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_images_do_not_depend_on_the_other_counts(tmp_path: Path) -> None:
    tests = {"n_test_good": 1, "n_test_defect": 1}
    small = _digests(generate_sample_dataset(tmp_path / "a", n_train=1, **tests))
    large = _digests(generate_sample_dataset(tmp_path / "b", n_train=3, **tests))
    assert small.items() <= large.items()


def test_regenerating_replaces_the_old_dataset(tmp_path: Path) -> None:
    counts = {"n_train": 1, "n_test_good": 0, "n_test_defect": 1}
    first = generate_sample_dataset(tmp_path, name="d", **counts)
    (first / "stale.txt").write_text("left over")
    second = generate_sample_dataset(tmp_path, name="d", seed=1, **counts)
    assert second == first
    assert not (second / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": "../escape"},
        {"name": ""},
        {"n_train": 0},
        {"n_test_defect": -1},
        {"size": 32},
        {"seed": -1},
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, arguments: dict) -> None:
    with pytest.raises(ValueError):
        generate_sample_dataset(tmp_path, **arguments)
    assert list(tmp_path.iterdir()) == []


def test_command_line_prints_the_dataset_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def small(root: Path, name: str, seed: int) -> Path:
        calls.append(seed)
        return generate_sample_dataset(root, name, n_train=1, n_test_good=0, n_test_defect=0)

    monkeypatch.setattr(sample_data, "generate_sample_dataset", small)
    main([str(tmp_path), "--name", "nut", "--seed", "3"])
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "nut"
    assert calls == [3]
    assert (tmp_path / "nut" / "train" / "good" / "000.png").is_file()

"""Orientation augmentation (`make_model.py --augment`): the views are exact turns and
flips, and the training features hold each image and then its views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ind_knn_ad.augment import VIEW_SETS, views_of, with_views
from ind_knn_ad.extractor import extract_features
from ind_knn_ad.preprocess import Preprocess


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

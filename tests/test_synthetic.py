"""Synthetic defects: each kind changes exactly the pixels its mask names, about the size
asked for, the same for the same seed, on bright and dark surfaces alike."""

from __future__ import annotations

import numpy as np
import pytest

from ind_knn_ad.calibration.synthetic import DEFECTS, smooth_noise


def surface(seed: int, level: int) -> np.ndarray:
    """A plain textured surface around grey level `level`, with a border of another tone."""
    rng = np.random.default_rng(seed)
    image = np.clip(level + rng.normal(0, 6, size=(96, 128, 3)), 0, 255).astype(np.uint8)
    image[:4], image[-4:], image[:, :4], image[:, -4:] = 30, 30, 30, 30
    return image


@pytest.mark.parametrize("kind", DEFECTS)
@pytest.mark.parametrize("level", [40, 200])
@pytest.mark.parametrize("size", [1, 8, 24])
def test_the_mask_is_what_changed(kind: str, level: int, size: int) -> None:
    image = surface(size, level)
    damaged, mask = DEFECTS[kind](image.copy(), size, np.random.default_rng(size + level))
    assert damaged.shape == image.shape and damaged.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert mask.any(), "a defect that changes nothing"
    np.testing.assert_array_equal(mask, (damaged != image).any(axis=2))
    area = int(mask.sum())
    assert area <= 2 * size * size + 8 * size + 16  # about the size asked for, not more


@pytest.mark.parametrize("kind", DEFECTS)
def test_the_same_seed_gives_the_same_defect(kind: str) -> None:
    image = surface(0, 120)
    first = DEFECTS[kind](image, 12, np.random.default_rng(5))
    again = DEFECTS[kind](image, 12, np.random.default_rng(5))
    other = DEFECTS[kind](image, 12, np.random.default_rng(6))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])


def test_larger_defects_cover_more() -> None:
    image = surface(1, 120)
    for kind, defect in DEFECTS.items():
        small = defect(image, 6, np.random.default_rng(0))[1].sum()
        large = defect(image, 30, np.random.default_rng(0))[1].sum()
        assert large > 2 * small, kind


def test_smooth_noise_is_smooth_and_in_range() -> None:
    noise = smooth_noise((64, 80), 16, np.random.default_rng(0))
    assert noise.shape == (64, 80) and noise.min() >= 0 and noise.max() <= 1
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # no jumps between neighbours
    assert noise.std() > 0.05


def test_a_fit_records_what_it_can_see(sample_model) -> None:
    """Every kind at every size on held-out training images; large defects are caught more
    often than small ones, and the largest blotches and missing regions always."""
    from ind_knn_ad.model_file.store import load_model

    model = load_model(sample_model)
    rows = model.settings["detectability"]
    sizes = sorted({row["size_px"] for row in rows})
    assert {(row["defect"], row["size_px"]) for row in rows} == {
        (kind, size) for kind in DEFECTS for size in sizes
    }
    assert len(sizes) == 3 and sizes[-1] > 4 * sizes[0]
    assert all(row["tried"] == min(6, model.settings["train_images"]) for row in rows)

    def caught(size: int) -> int:
        return sum(row["caught"] for row in rows if row["size_px"] == size)

    assert caught(sizes[-1]) >= caught(sizes[0])
    largest = {row["defect"]: row for row in rows if row["size_px"] == sizes[-1]}
    for kind in ("blotch", "missing"):
        assert largest[kind]["caught"] == largest[kind]["tried"], kind


def test_with_few_training_images_the_threshold_comes_from_the_synthetic_defects(
    sample_dataset,
) -> None:
    """8 training images, fewer than FEW: the threshold is placed against the synthetic
    defects that the detectability table counts, so the table's catches at it are the
    rule's own."""
    from dataclasses import replace

    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.io.datasets import load_dataset
    from ind_knn_ad.train import train

    dataset = load_dataset(sample_dataset)
    few = replace(dataset, train=dataset.train[:8], test=[])
    model = train(FitConfig(backbone="efficientnet_lite0"), few, device="cpu").model
    record = model.settings["threshold"]
    assert "synthetic defects" in record["rule"] and record["holdout"]["count"] == 8
    rows = model.settings["detectability"]
    assert record["synthetic"]["count"] == sum(row["tried"] for row in rows) == 6 * 15
    assert record["synthetic"]["caught"] == sum(row["caught"] for row in rows) > 0


def test_the_fit_shows_and_saves_what_it_can_see(sample_model) -> None:
    import json

    printed = sample_model.with_suffix(".stdout").read_text()
    assert "Synthetic defects on held-out good images, caught at" in printed
    assert "scratch" in printed and "px" in printed
    assert printed.rstrip().endswith("Model file creation is complete.")
    results = json.loads(sample_model.with_suffix(".results.json").read_text())
    assert {row["defect"] for row in results["detectability"]} == set(DEFECTS)

"""The streamed fit (issue 27): features in chunks, the bank from a composable coreset, what
held-out scoring reads kept; and the memory plan that picks it before any work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.extractor import extract_features
from ind_knn_ad.io.limits import FIT_ADDRESS_PER_PIXEL, FIT_ADDRESS_SPACE
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.fitting import no_progress
from ind_knn_ad.methods.patchcore import memory
from ind_knn_ad.methods.patchcore.fit import FITTER
from ind_knn_ad.methods.patchcore.held_out import SampledFeatures, filler_images
from ind_knn_ad.methods.patchcore.streamed import streamed_features
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset
from ind_knn_ad.search.streamed import StreamedCoreset


def identity(arrays: np.ndarray) -> np.ndarray:
    """An extractor whose features are the input's pixels: 3 channels, 64 patches at 8 px."""
    return arrays.copy()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """80 noisy 8x8 photos of four kinds, so that the bank has clusters to cover."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    paths = []
    for index in range(80):
        base = np.full((8, 8, 3), 60 * (index % 4), dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 21, (8, 8, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


CONFIG = FitConfig(preprocess=Preprocess(8, 8), coreset=0.05, image_score="max")


def _distances(points: np.ndarray, bank: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - bank[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_the_streamed_bank_covers_every_patch_about_as_greedy_does(photos: list[Path]) -> None:
    whole = extract_features(identity, photos, CONFIG.preprocess)
    train = streamed_features(identity, photos, CONFIG, 7, 4, no_progress)
    assert train.bank is not None
    bank, sources = train.bank
    rows = whole.features.reshape(-1, 3)
    plain = rows[greedy_coreset(rows, len(bank))]
    assert len(bank) == len(plain) == 256  # 5% of 80 x 64 patches
    # Each bank row is a patch of the image it names.
    for row, source in zip(bank, sources, strict=True):
        assert (whole.features[source] == row).all(axis=1).any()
    streamed, greedy = _distances(rows, bank).max(), _distances(rows, plain).max()
    assert streamed <= 3 * greedy  # r1 + r2, each at most twice the best radius


def test_held_out_scoring_reads_the_kept_images_as_the_whole_array(photos: list[Path]) -> None:
    whole = extract_features(identity, photos, CONFIG.preprocess)
    train = streamed_features(identity, photos, CONFIG, 7, 4, no_progress)
    assert isinstance(train.features, SampledFeatures)
    assert train.features.shape == whole.features.shape
    for image in filler_images(len(photos), CONFIG.seed):
        np.testing.assert_array_equal(train.features[image], whole.features[image])
    fitted = FITTER.fit(train, CONFIG, "max", no_progress)
    held_out = fitted.holdout_scores()
    assert len(held_out) == len(photos) and np.isfinite(held_out).all()
    assert fitted.settings["coreset"]["streamed"] is True


def test_an_image_not_kept_is_an_error_not_a_stand_in() -> None:
    features = SampledFeatures((3, 4, 2), {1: np.zeros((4, 2), np.float32)})
    assert features[1, :2].shape == (2, 2)
    with pytest.raises(IndexError, match="training image 0 is not held"):
        features[0]


def test_the_stream_must_bring_the_rows_it_announced() -> None:
    coreset = StreamedCoreset(10, 2, 128, 0)
    coreset.add(np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="6 of the 10 rows"):
        coreset.finish()
    with pytest.raises(ValueError, match="more than the 10 rows"):
        coreset.add(np.zeros((5, 3), np.float32))


def test_a_stream_of_one_chunk_picks_plain_greedys_bank() -> None:
    rows = np.random.default_rng(1).random((400, 3), dtype=np.float32)
    coreset = StreamedCoreset(400, 30, 128, 2)
    coreset.add(rows)
    bank, indices = coreset.finish()
    plain = np.sort(greedy_coreset(rows, 30, seed=2))
    np.testing.assert_array_equal(indices, plain)
    np.testing.assert_array_equal(bank, rows[plain])


def test_the_same_stream_picks_the_same_bank() -> None:
    rows = np.random.default_rng(0).random((300, 3), dtype=np.float32)
    one, two = StreamedCoreset(300, 20, 128, 5), StreamedCoreset(300, 20, 128, 5)
    for coreset in (one, two):
        for start in range(0, 300, 100):
            coreset.add(rows[start : start + 100])
    np.testing.assert_array_equal(one.finish()[1], two.finish()[1])


def _shape(images: int) -> memory.FitShape:
    """efficientnet_lite0 at 224 px: 784 patches of 152 channels, the default bank."""
    return memory.FitShape(
        images, 784, 784, 152, coreset_size(images * 784, None, 784), 16 * 224**2
    )


def test_a_small_fit_stays_in_memory_and_a_large_one_streams_in_bounded_memory() -> None:
    plenty = 64 * 10**9
    small = memory.plan(_shape(200), plenty)
    assert not small.streamed and small.problem is None and small.stream is None
    large = memory.plan(_shape(10_000), plenty)
    assert large.streamed and large.stream == large.chunk_images
    assert large.in_memory > 10**10  # the features alone: 4.8 GB
    assert large.streaming == memory.plan(_shape(100_000), plenty).streaming < 4 * 10**9


def test_a_fit_that_cannot_fit_is_refused_with_what_it_needs() -> None:
    plan = memory.plan(_shape(10_000), 10**9)
    assert plan.problem is not None
    assert plan.problem.startswith("a fit on 10000 images needs about")
    assert plan.problem.endswith("more than the 1 GB of memory here")
    # A method that cannot stream is refused on its in-memory peak alone.
    assert memory.plan(_shape(10_000), 12 * 10**9, can_stream=False).problem is not None


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing")
@pytest.mark.parametrize("settings", [["--settings", "fixed"], []], ids=["fixed", "auto"])
def test_the_command_refuses_a_fit_that_cannot_fit_before_torch_loads(
    sample_dataset: Path, tmp_path: Path, settings: list[str]
) -> None:
    """2,000 photos under an address-space limit 300 MB above what any fit maps: neither
    way fits, and the fit stops with one line, exit 2, before any feature is extracted and
    before torch is imported (a `torch` that fails to import stands first on the path), so
    the refusal costs seconds, not the fit's imports (bench/stream_fit.py --refuse)."""
    good = tmp_path / "many" / "train" / "good"
    good.mkdir(parents=True)
    sources = sorted((sample_dataset / "train" / "good").glob("*.png"))
    for index in range(2000):
        (good / f"{index:04d}.png").symlink_to(sources[index % len(sources)])
    no_torch = tmp_path / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    limit = FIT_ADDRESS_SPACE + FIT_ADDRESS_PER_PIXEL * 224 * 224 + 300_000_000
    command = ["prlimit", f"--as={limit}", sys.executable, ROOT / "make_model.py"]
    options = [*settings, "--backbone", "efficientnet_lite0", "--device", "cpu"]
    model = tmp_path / "m.safetensors"
    result = subprocess.run(
        [*command, "--data-dir", tmp_path / "many", *options, "--model", model],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": f"{no_torch.parent}{os.pathsep}{ROOT}",
            "HF_HUB_OFFLINE": "1",
        },
    )
    assert result.returncode == exit_codes.USAGE, result.stderr[-2000:]
    [line] = result.stderr.splitlines()
    needs = r"a fit on 2000 images needs about [\d.]+ GB, more than the [\d.]+ GB of memory here"
    assert re.fullmatch(f"error: {re.escape(str(tmp_path / 'many'))}: {needs}", line)
    assert not model.exists()

"""The scores against an exhaustive search with the same final arithmetic, bit for bit, on
random and adversarial inputs: near ties, duplicate rows, large common offsets (where the
BLAS formula |q|^2 - 2 q.b + |b|^2 loses most digits), tiny and one-patch regions, banks
below and above the pruned search's size, and other CPUs' BLAS and NumPy kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ARITHMETIC, ROOT

from ind_knn_ad import threads
from ind_knn_ad.methods import padim, spade
from ind_knn_ad.methods.padim import fit as padim_fit
from ind_knn_ad.methods.patchcore.image_score import (
    IMAGE_SCORES,
    REWEIGHT_NEIGHBOURS,
    reweighted_score,
    score_features,
)
from ind_knn_ad.search import nearest as scoring


def exhaustive(features: np.ndarray, bank: np.ndarray, image_score: str, regions=None) -> list:
    """Every patch against every bank row in float64, then the image score rule."""
    batch, channels, height, width = features.shape
    flat = features.transpose(0, 2, 3, 1).reshape(batch, height * width, channels)
    counted = (
        np.ones((batch, height * width), bool) if regions is None else regions.reshape(batch, -1)
    )
    scores = []
    for image in range(batch):
        patches = flat[image][counted[image]].astype(np.float64)
        squared = ((patches[:, None, :] - bank.astype(np.float64)[None]) ** 2).sum(axis=-1)
        distances = np.sqrt(squared.min(axis=1))
        if image_score == "top10":
            scores.append(float(np.sort(distances)[-min(10, len(distances)) :].mean()))
            continue
        worst = int(distances.argmax())
        score = float(distances[worst])
        if image_score == "reweighted":
            nearest = int(squared[worst].argmin())
            score = reweighted_score(
                patches[worst].astype(np.float32), nearest, score, bank, REWEIGHT_NEIGHBOURS
            )
        scores.append(score)
    return scores


def case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random bank, batch and (sometimes) regions, with adversarial structure mixed in."""
    rng = np.random.default_rng(seed)
    channels = int(rng.choice([3, 16, 67, 272]))
    bank_size = int(rng.choice([1, 5, 15, 16, 40, 300, 1200]))
    batch, height, width = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 9))
    offset = float(rng.choice([0.0, 30.0, 1e3]))  # a large common offset: cancellation
    scale = float(rng.choice([1e-3, 1.0, 10.0]))
    bank = (offset + scale * rng.normal(size=(bank_size, channels))).astype(np.float32)
    if bank_size > 4:
        bank[1] = bank[0]  # duplicate rows: ties in the nearest row
        bank[3] = np.nextafter(bank[2], np.float32(np.inf))  # rows one ulp apart
    features = rng.normal(size=(batch, channels, height, width))
    features = (offset + scale * features).astype(np.float32)
    picks = rng.integers(0, bank_size, size=(batch, height, width))
    near = rng.random((batch, height, width)) < 0.5  # patches that sit almost on a bank row
    jitter = scale * 1e-4 * rng.normal(size=features.shape)
    features = np.where(
        near[:, None], (bank[picks].transpose(0, 3, 1, 2) + jitter).astype(np.float32), features
    )
    if height * width > 1:
        features[0, :, 0, -1] = features[0, :, 0, 0]  # duplicate patches: ties in the score
    regions = None
    if rng.random() < 0.4:
        regions = rng.random((batch, height, width)) < 0.2
        regions[:, 0, 0] |= ~regions.reshape(batch, -1).any(axis=1)  # one patch at least
    return features, bank, regions


@pytest.mark.parametrize("image_score", IMAGE_SCORES)
def test_scores_equal_an_exhaustive_search(image_score: str) -> None:
    for seed in range(60):
        features, bank, regions = case(seed)
        expected = exhaustive(features, bank, image_score, regions)
        for maps in (True, False):
            got = [
                r.score
                for r in score_features(features, bank, image_score, maps=maps, regions=regions)
            ]
            assert got == expected, f"seed {seed}, maps={maps}"


def test_scores_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(7)
    bank = (30.0 + rng.normal(size=(500, 40))).astype(np.float32)
    features = (30.0 + rng.normal(size=(7, 40, 3, 4))).astype(np.float32)
    for rule in IMAGE_SCORES:
        for maps in (True, False):
            together = [r.score for r in score_features(features, bank, rule, maps=maps)]
            alone = [score_features(f[None], bank, rule, maps=maps)[0].score for f in features]
            pairs = [
                r.score
                for i in range(0, 7, 2)
                for r in score_features(features[i : i + 2], bank, rule, maps=maps)
            ]
            assert together == alone == pairs


def test_a_thread_cap_sizes_the_search_pool_and_keeps_the_scores() -> None:
    """A scorer given one core (`Detector(threads=1)`, as Ray's scorers are) searches on one
    thread, with the same scores as one searching on every core."""
    rng = np.random.default_rng(11)
    bank = (30.0 + rng.normal(size=(900, 40))).astype(np.float32)
    features = (30.0 + rng.normal(size=(3, 40, 6, 7))).astype(np.float32)
    uncapped = [r.score for r in score_features(features, bank, "max", maps=False)]
    try:
        threads.cap_threads(1)
        assert threads.cpu_count() == 1
        capped = [r.score for r in score_features(features, bank, "max", maps=False)]
        assert scoring._pool()._max_workers == 1
    finally:
        threads.cap_threads(None)
    assert capped == uncapped
    assert threads.cpu_count() == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="at least 1"):
        threads.cap_threads(0)


def test_the_pruned_search_keeps_the_worst_patch_when_bounds_round_low(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bank whose first rows bound every patch tightly: the pruning must still find the
    worst patch exactly, with probes that miss it (one probe per image)."""
    rng = np.random.default_rng(11)
    bank = (100.0 + rng.normal(size=(64, 32))).astype(np.float32)
    features = np.repeat(bank[:1].T[None, :, :, None], 30, axis=3)  # every patch = row 0
    features = features + 1e-3 * rng.normal(size=features.shape).astype(np.float32)
    features[0, :, 0, 17] += 0.5  # the worst patch, not the first
    monkeypatch.setattr(scoring, "PROBES", 1)
    for rule in IMAGE_SCORES:
        fast = score_features(features, bank, rule, maps=False)[0].score
        assert fast == exhaustive(features, bank, rule)[0]


def test_a_bank_of_identical_rows_scores_exactly() -> None:
    """What a fit on blank images gives: every bank row ties for every patch."""
    rng = np.random.default_rng(12)
    bank = np.repeat(rng.normal(size=(1, 64)).astype(np.float32), 5000, axis=0)
    bank[4321] += 3.0  # one row apart
    features = np.repeat(bank[:1].T[None, :, :, None], 14 * 14, axis=3).reshape(1, 64, 14, 14)
    features = features + np.float32(1e-3) * rng.normal(size=features.shape).astype(np.float32)
    for rule in IMAGE_SCORES:
        expected = exhaustive(features, bank, rule)
        for maps in (True, False):
            assert [r.score for r in score_features(features, bank, rule, maps=maps)] == expected


def test_maps_are_exact_where_the_score_is_made() -> None:
    features, bank, _ = case(3)
    result = score_features(features, bank, "max")[0]
    assert result.score == pytest.approx(float(result.patch_map.max()), rel=1e-6)


def test_an_image_with_no_patch_to_score_is_refused() -> None:
    features, bank, _ = case(5)
    regions = np.zeros((features.shape[0], *features.shape[2:]), bool)
    with pytest.raises(ValueError, match="at least one patch"):
        score_features(features, bank, "max", regions=regions)


def padim_case(seed: int) -> tuple[padim.PadimScorer, np.ndarray]:
    """Gaussians fitted on random features, and a batch to score, with a common offset."""
    rng = np.random.default_rng(seed)
    offset = float(rng.choice([0.0, 50.0]))
    train = (offset + rng.normal(size=(12, 6, 20))).astype(np.float32)  # (N, P, C)
    channels = padim_fit.choose_channels(20, 9, seed)
    gaussians = padim_fit.fit_gaussians(train, channels)
    scorer = padim.PadimScorer(channels, gaussians.mean, gaussians.inverse_covariance)
    features = (offset + rng.normal(size=(4, 20, 2, 3))).astype(np.float32)
    features[1] = train[0].T.reshape(20, 2, 3)  # a training image: every position close
    return scorer, features


def test_padim_scores_equal_a_float64_computation() -> None:
    for seed in range(10):
        scorer, features = padim_case(seed)
        rows = features[:, scorer.channels].reshape(len(features), len(scorer.channels), -1)
        for image, result in zip(rows, scorer(features), strict=True):
            centred = image.T.astype(np.float64) - scorer.mean.astype(np.float64)
            inverse = scorer.inverse.astype(np.float64)
            squared = ((inverse * centred[:, None, :]).sum(axis=-1) * centred).sum(axis=-1)
            assert result.score == float(np.sqrt(squared.max()))
        alone = [scorer(f[None])[0].score for f in features]
        assert alone == [r.score for r in scorer(features)]


def test_spade_scores_equal_a_float64_computation() -> None:
    rng = np.random.default_rng(0)
    train = (20.0 + rng.normal(size=(9, 12, 8))).astype(np.float32)  # (N, P, C)
    vectors = spade.image_vectors(train)
    scorer = spade.SpadeScorer(train, vectors, neighbours=3, maps=False)
    features = (20.0 + rng.normal(size=(3, 8, 3, 4))).astype(np.float32)
    queries = spade.image_vectors(features.reshape(3, 8, 12).transpose(0, 2, 1))
    for query, result in zip(queries, scorer(features), strict=True):
        difference = query.astype(np.float64) - vectors.astype(np.float64)
        distances = np.sqrt((difference**2).sum(axis=-1))
        assert result.score == float(np.sort(distances)[:3].mean())


SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_exact_search import case, padim_case
from ind_knn_ad.methods.patchcore.image_score import IMAGE_SCORES, score_features
out = []
for seed in range(25):
    features, bank, regions = case(seed)
    for rule in IMAGE_SCORES:
        for maps in (True, False):
            results = score_features(features, bank, rule, maps=maps, regions=regions)
            out.append([r.score for r in results])
for seed in range(5):
    scorer, features = padim_case(seed)
    out.append([r.score for r in scorer(features)])
print(json.dumps(out))
"""


def test_every_cpus_arithmetic_gives_the_same_bits() -> None:
    outputs = {}
    for name, environment in ARITHMETIC.items():
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(ROOT / "tests")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **environment, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        outputs[name] = json.loads(result.stdout)
    first = next(iter(outputs.values()))
    assert all(output == first for output in outputs.values()), list(outputs)

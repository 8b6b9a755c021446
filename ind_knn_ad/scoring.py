"""Scoring patch features against a memory bank: NumPy only, shared by every code path.

Fitting (torch) and the command-line scorer (ONNX Runtime) both hand their patch features
to these functions, so a score means the same thing wherever it was computed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .pipeline import cpu_count

# max: the worst patch (PatchCore). reweighted: eq. 7 of Roth et al. 2022. top10: the mean
# of the TOP_PATCHES worst patches, which one noisy patch cannot decide alone.
IMAGE_SCORES = ("max", "reweighted", "top10")
TOP_PATCHES = 10
# Neighbours of the nearest bank patch used by the re-weighted score (Roth et al. 2022, eq. 7).
REWEIGHT_NEIGHBOURS = 9
# Bound on the (queries x bank) distance block held at once per thread: 4M floats = 16 MB,
# a few hundred query rows against a typical bank. Large enough for BLAS to run at full
# speed, small enough that the passes over the block that follow it still hit the cache.
BLOCK_ELEMENTS = 1 << 22
# Scores without patch maps search every patch against the bank's first 1/BOUND_SHARE rows
# first: that distance bounds the patch's true one from above. A greedy coreset is stored
# in selection order, so its first rows already cover the training patches well and the
# bounds are tight.
BOUND_SHARE = 8
# Patches per image (those with the highest bounds) searched in full first, per patch the
# score is made of: the largest of their distances bounds the image's score from below (the
# TOP_PATCHES-th largest, for top10). For top10 on good 1024 px screw images, 80 probes
# instead of 10 cut the search from 0.72 to 0.23 s per image.
PROBES = 8
MAP_SIGMA = 4.0

Result = TypeVar("Result")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="nearest")


@functools.cache
def _blas():  # -> threadpoolctl.ThreadpoolController, imported only when scoring starts
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _augmented_bank(bank: np.ndarray, bank_norms: np.ndarray | None) -> np.ndarray:
    """(K, C + 1) rows [b, |b|^2]: one product with rows [-2 q, 1] gives |b|^2 - 2 q.b, so
    the block needs no separate pass to add the norms."""
    augmented = np.empty((bank.shape[0], bank.shape[1] + 1), dtype=np.float32)
    augmented[:, :-1] = bank
    augmented[:, -1] = np.einsum("ij,ij->i", bank, bank) if bank_norms is None else bank_norms
    return augmented


def _map_blocks(
    queries: np.ndarray,
    augmented: np.ndarray,
    work: Callable[[int, np.ndarray, np.ndarray], Result],
) -> list[Result]:
    """`work(first row, |b|^2 - 2 q.b block, |q|^2 of its rows)` for each block of query
    rows, in order.

    Blocks run on one thread per core, each with single-threaded BLAS: every core stays
    busy without BLAS's hand-offs between threads inside each call, which cost
    milliseconds when another process holds the other core. It also makes each row's
    arithmetic the same whatever else is in the batch. Adding |q|^2 is left to `work`: it
    does not change which bank row is nearest, so it is added once per query.
    """
    # At most BLOCK_ELEMENTS per block, and at least one block per thread.
    block = max(1, BLOCK_ELEMENTS // max(1, augmented.shape[0]))
    block = max(1, min(block, -(-len(queries) // cpu_count())))

    def one(start: int) -> Result:
        chunk = queries[start : start + block]
        # A one-row product would go to BLAS's matrix-vector routine, which rounds
        # differently; a second (copied) row keeps every row on the matrix-matrix path.
        rows = max(2, len(chunk))
        scaled = np.empty((rows, augmented.shape[1]), dtype=np.float32)
        np.multiply(chunk, -2.0, out=scaled[: len(chunk), :-1])  # scaling by 2 is exact
        scaled[len(chunk) :, :-1] = scaled[:1, :-1]
        scaled[:, -1] = 1.0
        squared = (scaled @ augmented.T)[: len(chunk)]
        return work(start, squared, np.einsum("ij,ij->i", chunk, chunk))

    starts: Sequence[int] = range(0, len(queries), block)
    with _blas().limit(limits=1, user_api="blas"):
        if len(starts) == 1:
            return [one(0)]
        return list(_pool().map(one, starts))


def _distances(nearest_squared: np.ndarray, query_norms: np.ndarray) -> np.ndarray:
    """Euclidean distance from the block minimum of |b|^2 - 2 q.b and |q|^2."""
    return np.sqrt(np.maximum(nearest_squared + query_norms, 0.0))


def _nearest_distances(start: int, squared: np.ndarray, query_norms: np.ndarray) -> np.ndarray:
    """_map_blocks work: each row's distance to its nearest bank row."""
    return _distances(squared.min(axis=1), query_norms)


def _nearest_rows(
    start: int, squared: np.ndarray, query_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """_map_blocks work: each row's distance to its nearest bank row, and that row."""
    index = squared.argmin(axis=1)
    best = np.take_along_axis(squared, index[:, None], axis=1)[:, 0]
    return _distances(best, query_norms), index


def nearest_neighbours(
    queries: np.ndarray, bank: np.ndarray, bank_norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest bank row, and that row's index.

    Uses |q|^2 - 2 q.b + |b|^2 with one matrix product per block of queries (BLAS does the
    work), in blocks so memory stays bounded whatever the bank size.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    blocks = _map_blocks(queries, _augmented_bank(bank, bank_norms), _nearest_rows)
    distances = np.concatenate([np.empty(0, np.float32), *(d for d, _ in blocks)])
    indices = np.concatenate([np.empty(0, np.int64), *(i for _, i in blocks)])
    return distances, indices


def _worst_count(image_score: str) -> int:
    """How many of an image's worst patches its score is made of."""
    return TOP_PATCHES if image_score == "top10" else 1


def _top_mean(distances: np.ndarray, count: int) -> float:
    """Mean of the `count` largest values (all, when fewer), summed in a fixed order, so
    the same values give the same bits whichever search found them."""
    count = min(count, len(distances))
    top = np.sort(np.partition(distances, len(distances) - count)[len(distances) - count :])
    return float(top.astype(np.float64).mean())


def reweighted_score(
    patch: np.ndarray, nearest: int, distance: float, bank: np.ndarray, neighbours: int
) -> float:
    """PatchCore's image score: the maximum patch distance, scaled by how isolated its
    nearest bank entry is (eq. 7 of Roth et al. 2022).

    If the nearest bank patch sits in a dense region of normal features, the test patch is
    confidently abnormal and keeps nearly its full score; if that bank patch is itself an
    outlier the score is damped. Written as 1 - softmax, which cannot overflow.
    """
    anchor = bank[nearest]
    count = min(neighbours, len(bank))
    to_anchor = ((bank - anchor) ** 2).sum(axis=1)
    support = np.argpartition(to_anchor, count - 1)[:count]  # includes the anchor itself
    to_patch = np.sqrt(((bank[support] - patch) ** 2).sum(axis=1)).astype(np.float64)
    top = to_patch.max()
    weight = 1.0 - np.exp(distance - top) / np.exp(to_patch - top).sum()
    return float(weight * distance)


@dataclass(frozen=True)
class PatchScores:
    """One image's result: its score and the (h, w) grid of patch distances (None when it
    was not asked for)."""

    score: float
    patch_map: np.ndarray | None


def score_features(
    features: np.ndarray,
    bank: np.ndarray,
    image_score: str = "max",
    bank_norms: np.ndarray | None = None,
    maps: bool = True,
    regions: np.ndarray | None = None,
) -> list[PatchScores]:
    """Score a batch of (B, C, h, w) patch features; one nearest-neighbour search for all.

    With `regions` ((B, h, w) bool, each image with at least one True) only those patches
    make the image score, and the map is 0 elsewhere: an aligned part is scored on the part.

    Each patch needs only its distance to the nearest bank row (a minimum, cheaper than an
    argmin); the re-weighted score also needs the nearest row of each image's worst patch,
    taken from the same distance block as that patch's distance.

    With `maps=False` the patch maps are left out (None) and the scores, bit for bit the
    same, come from a search that skips the patches that cannot be an image's worst: about
    five times less work on typical images.
    """
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {IMAGE_SCORES}, not {image_score!r}")
    batch, channels, height, width = features.shape
    patches = height * width
    flat = np.ascontiguousarray(features.transpose(0, 2, 3, 1), dtype=np.float32)
    flat = flat.reshape(-1, channels)
    counted = np.ones(batch * patches, bool) if regions is None else regions.reshape(-1)
    if not maps and bank.shape[0] >= 2 * BOUND_SHARE and batch > 0:
        return _scores_only(flat, bank, bank_norms, patches, image_score, counted)

    def nearest(
        start: int, squared: np.ndarray, query_norms: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        distances = _nearest_distances(start, squared, query_norms)
        worst = []  # (image, row, nearest bank row) of each image's worst patch in the block
        if image_score == "reweighted":
            stop = start + len(squared)
            for image in range(start // patches, (stop - 1) // patches + 1):
                first, last = max(start, image * patches), min(stop, (image + 1) * patches)
                if not counted[first:last].any():
                    continue
                candidates = np.where(
                    counted[first:last], distances[first - start : last - start], -np.inf
                )
                row = first + int(candidates.argmax())
                worst.append((image, row, int(squared[row - start].argmin())))
        return distances, worst

    blocks = _map_blocks(flat, _augmented_bank(bank, bank_norms), nearest)
    distances = np.concatenate([np.empty(0, np.float32), *(d for d, _ in blocks)])
    # Each image's worst patch (the first on ties) and its nearest bank row.
    worst_of: dict[int, tuple[int, int]] = {}
    for _, worst in blocks:
        for image, row, index in worst:
            if image not in worst_of or distances[row] > distances[worst_of[image][0]]:
                worst_of[image] = (row, index)
    distances = np.where(counted, distances, np.float32(0.0)).reshape(batch, patches)
    counted = counted.reshape(batch, patches)
    results = []
    for image in range(batch):
        score = _top_mean(distances[image][counted[image]], _worst_count(image_score))
        if image_score == "reweighted":
            row, index = worst_of[image]
            score = reweighted_score(flat[row], index, score, bank, REWEIGHT_NEIGHBOURS)
        results.append(PatchScores(score, distances[image].reshape(height, width)))
    return results


def _scores_only(
    flat: np.ndarray,
    bank: np.ndarray,
    bank_norms: np.ndarray | None,
    patches: int,
    image_score: str,
    counted: np.ndarray,
) -> list[PatchScores]:
    """Image scores as score_features gives them, searching in full only the patches that
    could be their image's worst.

    A patch's distance to a subset of the bank is at least its distance to the whole bank
    (the same float32 values, minimised over fewer rows). A patch whose bound is below the
    k-th largest exact distance found in its image (k patches make the score) is therefore
    strictly below the image's k worst and is never searched in full; nor is any patch that
    is not `counted`.
    """
    batch = len(flat) // patches
    augmented = _augmented_bank(bank, bank_norms)
    prefix = augmented[: len(augmented) // BOUND_SHARE]
    upper = np.concatenate(_map_blocks(flat, prefix, _nearest_distances))
    upper = np.where(counted, upper, -np.inf).reshape(batch, patches)
    worst = _worst_count(image_score)
    probes = min(PROBES * worst, patches)
    top = np.argpartition(upper, patches - probes, axis=1)[:, patches - probes :]
    top_rows = (top + patches * np.arange(batch)[:, None]).ravel()
    probed = np.concatenate(_map_blocks(flat[top_rows], augmented, _nearest_distances))
    probed = np.where(counted[top_rows], probed, -np.inf)
    lower = np.sort(probed.reshape(batch, probes), axis=1)[:, probes - min(worst, probes)]
    rows = np.flatnonzero((upper.ravel() >= np.repeat(lower, patches)) & counted)
    blocks = _map_blocks(flat[rows], augmented, _nearest_rows)
    exact = np.concatenate([d for d, _ in blocks])
    indices = np.concatenate([i for _, i in blocks])
    images = rows // patches
    results = []
    for image in range(batch):
        first, last = np.searchsorted(images, [image, image + 1])
        score = _top_mean(exact[first:last], worst)
        if image_score == "reweighted":
            row = first + int(exact[first:last].argmax())  # rows are in order: first on ties
            score = reweighted_score(
                flat[rows[row]], int(indices[row]), score, bank, REWEIGHT_NEIGHBOURS
            )
        results.append(PatchScores(score, None))
    return results


def anomaly_map(
    patch_map: np.ndarray, size: tuple[int, int], sigma: float = MAP_SIGMA
) -> np.ndarray:
    """Patch distances upsampled (bilinear) to the model's input (width, height), then
    Gaussian-blurred."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    upsampled = Image.fromarray(patch_map.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    return gaussian_filter(np.asarray(upsampled, dtype=np.float32), sigma=sigma, truncate=4.0)

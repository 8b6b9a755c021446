"""PatchCore's image scores: how an image's score is made of its patches' distances to the
memory bank, found by the exact search (`search.nearest`).
"""

from __future__ import annotations

import numpy as np

from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.search.nearest import SearchBank, WorstPatches, exact_squared, worst_patches

# max: the worst patch (PatchCore). reweighted: eq. 7 of Roth et al. 2022. top10: the mean
# of the TOP_PATCHES worst patches, which one noisy patch cannot decide alone.
IMAGE_SCORES = ("max", "reweighted", "top10")
TOP_PATCHES = 10
# Neighbours of the nearest bank patch used by the re-weighted score (Roth et al. 2022, eq. 7).
REWEIGHT_NEIGHBOURS = 9


def score_features(
    features: np.ndarray,
    bank: np.ndarray | SearchBank,
    image_score: str = "max",
    maps: bool = True,
    regions: np.ndarray | None = None,
) -> list[PatchScores]:
    """Score a batch of (B, C, h, w) patch features against a memory bank.

    With `regions` ((B, h, w) bool, each image with at least one True) only those patches
    make the image score, and the map is 0 elsewhere: an aligned part is scored on the part.

    The score is exact (`nearest.worst_patches`): the same bits on every CPU, in every
    batch, with or without maps, and equal to an exhaustive float64 search. Maps hold the
    BLAS distances (float32), exact where the score was decided. With `maps=False` the
    maps are None and the search is pruned: several times less work.
    """
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {IMAGE_SCORES}, not {image_score!r}")
    batch, channels, height, width = features.shape
    patches = height * width
    flat = np.ascontiguousarray(features.transpose(0, 2, 3, 1), dtype=np.float32)
    flat = flat.reshape(-1, channels)
    counted = np.ones(batch * patches, bool) if regions is None else regions.reshape(-1)
    if not counted.reshape(batch, patches).any(axis=1).all():
        raise ValueError("every image needs at least one patch to score")
    searchable = SearchBank.of(bank)
    found = worst_patches(flat, searchable, counted, patches, _worst_count(image_score), maps)
    scores = _image_scores(flat, searchable.rows, found, batch, image_score, patches)
    if found.approximate is None:
        return [PatchScores(score, None) for score in scores]
    distances = np.sqrt(np.maximum(found.approximate, 0.0))
    distances[found.rows] = np.sqrt(found.exact)  # the patches the score is made of, exactly
    distances = np.where(counted, distances, np.float32(0.0)).reshape(batch, height, width)
    return [PatchScores(score, grid) for score, grid in zip(scores, distances, strict=True)]


def _worst_count(image_score: str) -> int:
    """How many of an image's worst patches its score is made of."""
    return TOP_PATCHES if image_score == "top10" else 1


def _image_scores(
    flat: np.ndarray,
    bank: np.ndarray,
    found: WorstPatches,
    batch: int,
    image_score: str,
    patches: int,
) -> list[float]:
    """Each image's score from the exact squared distances of a set of rows that holds
    its worst patches. The mean of the top ones is summed in a fixed order (ascending).
    Features or a bank so large that float32 overflows give NaN: callers must check."""
    rows, exact, nearest = found.rows, found.exact, found.nearest
    images = rows // patches
    scores = []
    for image in range(batch):
        first, last = np.searchsorted(images, [image, image + 1])
        distances = np.sqrt(exact[first:last])
        count = min(_worst_count(image_score), len(distances))
        score = float(np.sort(distances)[len(distances) - count :].mean())
        if image_score == "reweighted":
            row = first + int(distances.argmax())  # rows are in order: the first on ties
            score = reweighted_score(
                flat[rows[row]], int(nearest[row]), score, bank, REWEIGHT_NEIGHBOURS
            )
        scores.append(score)
    return scores


def reweighted_score(
    patch: np.ndarray, nearest: int, distance: float, bank: np.ndarray, neighbours: int
) -> float:
    """PatchCore's image score: the maximum patch distance, scaled by how isolated its
    nearest bank entry is (eq. 7 of Roth et al. 2022).

    If the nearest bank patch sits in a dense region of normal features, the test patch is
    confidently abnormal and keeps nearly its full score; if that bank patch is itself an
    outlier the score is damped. Written as 1 - softmax, which cannot overflow. Distances
    use exact_squared's arithmetic, so the weight is the same on every CPU.
    """
    anchor = bank[nearest]
    count = min(neighbours, len(bank))
    to_anchor = exact_squared(bank, anchor[None, :])
    support = np.sort(np.argpartition(to_anchor, count - 1)[:count])  # includes the anchor
    to_patch = np.sqrt(exact_squared(bank[support], patch[None, :]))
    top = to_patch.max()
    weight = 1.0 - np.exp(distance - top) / np.exp(to_patch - top).sum()
    return float(weight * distance)

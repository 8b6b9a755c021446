"""Scoring patch features against a memory bank: NumPy only, shared by every code path.

Fitting (torch) and the command-line scorer (ONNX Runtime) both hand their patch features
to these functions, so a score means the same thing wherever it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SCORES = ("max", "reweighted")
# Neighbours of the nearest bank patch used by the re-weighted score (Roth et al. 2022, eq. 7).
REWEIGHT_NEIGHBOURS = 9
# Bound on the (queries x bank) distance block held at once: 16M floats = 64 MB.
BLOCK_ELEMENTS = 1 << 24
MAP_SIGMA = 4.0


def nearest_neighbours(
    queries: np.ndarray, bank: np.ndarray, bank_norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest bank row, and that row's index.

    Uses |q|^2 - 2 q.b + |b|^2 with one matrix product per block of queries (BLAS does the
    work), in blocks so memory stays bounded whatever the bank size.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if bank_norms is None:
        bank_norms = np.einsum("ij,ij->i", bank, bank)
    block = max(1, BLOCK_ELEMENTS // max(1, bank.shape[0]))
    distances = np.empty(queries.shape[0], dtype=np.float32)
    indices = np.empty(queries.shape[0], dtype=np.int64)
    for start in range(0, queries.shape[0], block):
        chunk = queries[start : start + block]
        squared = chunk @ bank.T
        squared *= -2.0
        squared += bank_norms
        nearest = squared.argmin(axis=1)
        rows = np.arange(chunk.shape[0])
        best = squared[rows, nearest] + np.einsum("ij,ij->i", chunk, chunk)
        indices[start : start + block] = nearest
        distances[start : start + block] = np.sqrt(np.maximum(best, 0.0))
    return distances, indices


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
    """One image's result: its score and the (h, w) grid of patch distances."""

    score: float
    patch_map: np.ndarray


def score_features(
    features: np.ndarray,
    bank: np.ndarray,
    image_score: str = "max",
    bank_norms: np.ndarray | None = None,
) -> list[PatchScores]:
    """Score a batch of (B, C, h, w) patch features; one nearest-neighbour search for all."""
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {IMAGE_SCORES}, not {image_score!r}")
    batch, channels, height, width = features.shape
    flat = features.transpose(0, 2, 3, 1).reshape(-1, channels)
    if bank_norms is None:
        bank_norms = np.einsum("ij,ij->i", bank, bank)
    distances, indices = nearest_neighbours(flat, bank, bank_norms)
    distances = distances.reshape(batch, height * width)
    indices = indices.reshape(batch, height * width)
    results = []
    for image in range(batch):
        worst = int(distances[image].argmax())
        score = float(distances[image, worst])
        if image_score == "reweighted":
            patch = flat[image * height * width + worst]
            nearest = int(indices[image, worst])
            score = reweighted_score(patch, nearest, score, bank, REWEIGHT_NEIGHBOURS)
        results.append(PatchScores(score, distances[image].reshape(height, width)))
    return results


def anomaly_map(patch_map: np.ndarray, size: int, sigma: float = MAP_SIGMA) -> np.ndarray:
    """Patch distances upsampled (bilinear) to the model's input size, then Gaussian-blurred."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    upsampled = Image.fromarray(patch_map.astype(np.float32), mode="F").resize(
        (size, size), Image.BILINEAR
    )
    return gaussian_filter(np.asarray(upsampled, dtype=np.float32), sigma=sigma, truncate=4.0)

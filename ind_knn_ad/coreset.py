"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Each step adds the point farthest from everything chosen so far, so the bank covers the
training patches with the smallest radius a greedy choice can give. Distances are taken in
a random low-dimensional projection (Johnson-Lindenstrauss), which keeps the ordering of
distances while making each step cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.random_projection import SparseRandomProjection

PROJECTION_DIM = 128


def project(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Seeded sparse random projection of (N, D) features to (N, dim); identity if D <= dim."""
    if features.shape[1] <= dim:
        return features.float()
    projector = SparseRandomProjection(n_components=dim, random_state=seed)
    projector.fit(np.zeros((1, features.shape[1]), dtype=np.float32))
    matrix = torch.from_numpy(projector.components_.toarray().astype(np.float32))
    return features.float() @ matrix.T.to(features.device)


def coreset_size(count: int, fraction: float) -> int:
    """Bank size for `fraction` of `count` patches: at least one, rounded up."""
    return max(1, math.ceil(fraction * count))


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    projection_dim: int = PROJECTION_DIM,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Indices of `size` rows of (N, D) `features` chosen by greedy k-center.

    Vectorised: one matrix-vector product per step over all points, with the squared
    distance expanded as |x|^2 - 2 x.c + |c|^2 and the running minimum updated in place.
    `progress(done)` is called every few hundred steps for progress bars.
    """
    count = features.shape[0]
    if not 0 < size <= count:
        raise ValueError(f"coreset size must be in 1..{count}, not {size}")
    points = project(features, projection_dim, seed).contiguous()
    squared_norms = (points * points).sum(dim=1)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.empty(size, dtype=torch.long)
    index = int(torch.randint(count, (1,), generator=generator))
    min_distances = torch.full((count,), float("inf"), device=points.device)
    distances = torch.empty_like(min_distances)
    for step in range(size):
        chosen[step] = index
        center = points[index]
        torch.addmv(squared_norms, points, center, alpha=-2.0, out=distances)
        distances += squared_norms[index]
        torch.minimum(min_distances, distances, out=min_distances)
        index = int(torch.argmax(min_distances))
        if progress is not None and (step + 1) % 256 == 0:
            progress(step + 1)
    if progress is not None:
        progress(size)
    return chosen

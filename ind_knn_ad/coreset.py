"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Each step adds the point farthest from everything chosen so far, so the bank covers the
training patches with the smallest radius a greedy choice can give. Distances are taken in
a random low-dimensional projection (Johnson-Lindenstrauss), which keeps the ordering of
distances while making each step cheap.

The plain algorithm updates every point's distance at every step: N x steps work, minutes
for a few hundred images on a laptop CPU. `greedy_k_center` makes the same choices while
skipping most of that work. Points are grouped into blocks (the cells of centres already
chosen); when the triangle inequality shows that a new centre is farther from every point of
a block than those points already are from their nearest centre, the block's distances
cannot change and it is skipped. The skip test carries a margin for float32 rounding, so a
skipped update is one that would have left every value as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

PROJECTION_DIM = 128
# Points are regrouped into the cells of the centres chosen so far at steps 8, 16, 32, ...
# up to REGROUP_PER_SQRT * sqrt(N): finer cells mean fewer rows near each new centre, while
# more cells make the per-step check of every cell's pivot dearer.
REGROUP_FIRST = 8
REGROUP_PER_SQRT = 16
# Rows projected per matrix product, so projecting needs no second full-size copy.
PROJECT_ROWS = 1 << 16


def project(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Seeded sparse random projection of (N, D) features to (N, dim) float32.

    Identity (as float32) when D <= dim. Projected in row chunks to bound memory.
    """
    features = np.asarray(features)
    if features.shape[1] <= dim:
        return np.ascontiguousarray(features, dtype=np.float32)
    from sklearn.random_projection import SparseRandomProjection

    projector = SparseRandomProjection(n_components=dim, random_state=seed)
    projector.fit(np.zeros((1, features.shape[1]), dtype=np.float32))
    matrix = np.ascontiguousarray(projector.components_.toarray().T, dtype=np.float32)
    points = np.empty((features.shape[0], dim), dtype=np.float32)
    for start in range(0, features.shape[0], PROJECT_ROWS):
        chunk = np.asarray(features[start : start + PROJECT_ROWS], dtype=np.float32)
        np.matmul(chunk, matrix, out=points[start : start + PROJECT_ROWS])
    return points


def coreset_size(count: int, fraction: float) -> int:
    """Bank size for `fraction` of `count` patches: at least one, rounded up."""
    return max(1, math.ceil(fraction * count))


def start_index(count: int, seed: int) -> int:
    """The seeded random first centre."""
    return int(np.random.default_rng(seed).integers(count))


def greedy_coreset(
    features: np.ndarray,
    size: int,
    projection_dim: int = PROJECTION_DIM,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Indices of `size` rows of (N, D) `features` chosen by greedy k-center in a seeded
    random projection, starting from a seeded random row."""
    count = features.shape[0]
    if not 0 < size <= count:
        raise ValueError(f"coreset size must be in 1..{count}, not {size}")
    points = project(features, projection_dim, seed)
    return greedy_k_center(points, size, start_index(count, seed), progress)


class _Blocks:
    """Points reordered so that each block is a contiguous run of rows, with its pivot.

    `order[i]` is the original index of row i. Rows keep their original order inside a
    block, so a block's first maximum is also its lowest original index.
    """

    def __init__(
        self,
        points: np.ndarray,
        norms: np.ndarray,
        order: np.ndarray,
        owner: np.ndarray,
        pivots: np.ndarray,
    ) -> None:
        """Group rows by `owner`, an index into `pivots` (each block's pivot)."""
        count = len(owner)
        self.perm = np.argsort(owner.astype(np.int64) * count + order)
        owner = owner[self.perm]
        self.points = points[self.perm]
        self.norms = norms[self.perm]
        self.order = order[self.perm]
        self.starts = np.flatnonzero(np.diff(owner, prepend=-1))
        self.counts = np.diff(np.append(self.starts, count))
        self.pivots = pivots[owner[self.starts]]
        self.pivot_norms = np.einsum("ij,ij->i", self.pivots, self.pivots)

    def block_of(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right")) - 1

    def rows(self, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the `active` blocks, and where each block starts among them."""
        lengths = self.counts[active]
        firsts = np.cumsum(lengths) - lengths
        offsets = np.repeat(self.starts[active] - firsts, lengths)
        return np.arange(int(lengths.sum())) + offsets, firsts

    def first_farthest(self, min_distances: np.ndarray, block_max: np.ndarray) -> int:
        """Row of the largest distance; among equal ones, the lowest original index."""
        top = block_max.max()
        best_row = -1
        for block in np.flatnonzero(block_max == top):
            first = self.starts[block]
            row = first + int(min_distances[first : first + self.counts[block]].argmax())
            if best_row < 0 or self.order[row] < self.order[best_row]:
                best_row = row
        return best_row


def greedy_k_center(
    points: np.ndarray,
    size: int,
    start: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Greedy k-center on (N, d) `points`: `size` indices, the first being `start`.

    Step by step this is the textbook algorithm (next = the point with the largest squared
    distance to its nearest chosen point, the lowest index among equals; chosen points are
    never chosen again); block pruning only skips updates that cannot change anything.
    `progress(done)` is called every few hundred steps.
    """
    # Each step's matrix-vector products are far too small to share between threads; a
    # multi-threaded BLAS only adds a wait for the other thread, which on a busy machine
    # can take milliseconds per call.
    with threadpool_limits(limits=1, user_api="blas"):
        return _greedy_k_center(points, size, start, progress)


def _greedy_k_center(
    points: np.ndarray,
    size: int,
    start: int,
    progress: Callable[[int], None] | None,
) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    count, dim = points.shape
    if not 0 < size <= count:
        raise ValueError(f"coreset size must be in 1..{count}, not {size}")
    norms = np.einsum("ij,ij->i", points, points)
    # Bound on float32 rounding in |x|^2 - 2 x.c + |c|^2 (16 times the worst case for a dot
    # product of this length), added wherever a skip decision compares distances.
    tol = float(16 * (dim + 4) * np.finfo(np.float32).eps * norms.max())
    regroup_last = REGROUP_PER_SQRT * math.sqrt(count)
    centres = np.empty((size, dim), dtype=np.float32)
    centres[0] = points[start]
    # Row -> step of its nearest chosen centre, which is also its block's pivot.
    owner = np.zeros(count, dtype=np.int32)
    blocks = _Blocks(points, norms, np.arange(count), owner, centres)
    del points, norms
    min_distances = np.full(count, np.inf, dtype=np.float32)
    block_max = np.full(1, np.inf, dtype=np.float32)
    radius = np.full(1, np.inf, dtype=np.float32)
    # A block is updated when the centre's squared distance to its pivot is within
    # `limit`: (radius + current largest distance in the block)^2 plus the rounding margin.
    limit = np.full(1, np.inf, dtype=np.float32)
    next_regroup = REGROUP_FIRST
    chosen = np.empty(size, dtype=np.int64)
    position = int(np.flatnonzero(blocks.order == start)[0])
    for step in range(size):
        if step == next_regroup and step <= regroup_last:
            next_regroup *= 2
            blocks = _Blocks(blocks.points, blocks.norms, blocks.order, owner, centres)
            owner = owner[blocks.perm]
            min_distances = min_distances[blocks.perm]
            block_max = np.maximum.reduceat(min_distances, blocks.starts)
            # Every row is within its stored distance of its owner, the block's pivot.
            radius = np.sqrt(np.maximum(block_max, 0.0) + tol)
            limit = (2 * radius) ** 2 + tol
            position = int(np.flatnonzero(blocks.perm == position)[0])
        chosen[step] = blocks.order[position]
        centres[step] = blocks.points[position]
        scaled_centre = centres[step] * np.float32(-2.0)  # exact: a power of two
        centre_norm = blocks.norms[position]
        min_distances[position] = -np.inf
        owner[position] = step
        to_pivot = blocks.pivots @ scaled_centre
        to_pivot += blocks.pivot_norms
        active = np.flatnonzero(to_pivot <= limit - centre_norm)
        # The centre's own block always passes the test; make sure rounding cannot drop it,
        # as its largest distance must be recomputed.
        own = blocks.block_of(position)
        where = int(np.searchsorted(active, own))
        if where == len(active) or active[where] != own:
            active = np.insert(active, where, own)
        if len(active) == len(limit) or blocks.counts[active].sum() > count // 4:
            # Most rows: update them all in place rather than gather them.
            active = np.arange(len(limit))
            rows, firsts = slice(None), blocks.starts
        else:
            rows, firsts = blocks.rows(active)
        distances = blocks.points[rows] @ scaled_centre
        distances += blocks.norms[rows]
        distances += centre_norm
        old = min_distances[rows]
        if step < regroup_last:
            closer = distances < old
            owner[closer if isinstance(rows, slice) else rows[closer]] = step
        updated = np.minimum(old, distances)
        min_distances[rows] = updated
        block_max[active] = np.maximum.reduceat(updated, firsts)
        reach = radius[active] + np.sqrt(np.maximum(block_max[active], 0.0) + tol)
        limit[active] = reach * reach + tol
        position = blocks.first_farthest(min_distances, block_max)
        if progress is not None and (step + 1) % 256 == 0:
            progress(step + 1)
    if progress is not None:
        progress(size)
    return chosen

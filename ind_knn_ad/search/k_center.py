"""Greedy k-center: each step adds the point farthest from everything chosen so far, so the
chosen points cover all of them with the smallest radius a greedy choice can give.

The plain algorithm updates every point's distance at every step: N x steps work, minutes
for a few hundred images on a laptop CPU. `greedy_k_center` makes the same choices while
skipping most of that work. Points are grouped into blocks (the cells of centres already
chosen, regrouped as more are chosen). By the triangle inequality a new centre cannot come
nearer to a point than the point's nearest centre so far when it is far enough from the
point's block pivot: whole blocks, then single rows of the remaining blocks, are skipped
on that test. Every test carries a margin for float32 rounding, so a skipped update is one
that would have left every value as it was; the tests compare the choices with a plain
implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ind_knn_ad.threads import one_blas_thread

# Points are regrouped into the cells of the centres chosen so far at steps 8, 16, 32, ...
# up to REGROUP_PER_SQRT * sqrt(N): finer cells mean fewer rows near each new centre, while
# more cells make the per-step check of every cell's pivot dearer.
REGROUP_FIRST = 8
REGROUP_PER_SQRT = 16


def start_index(count: int, seed: int) -> int:
    """The seeded random first centre."""
    return int(np.random.default_rng(seed).integers(count))


class _Blocks:
    """Points reordered so that each block is a contiguous run of rows, with its pivot.

    `order[i]` is the original index of row i. Rows keep their original order inside a
    block, so a block's first maximum is also its lowest original index. `near` and `far`
    bound each row's distance to its block's pivot from below and above (0 and infinity
    while unknown).
    """

    def __init__(
        self,
        points: np.ndarray,
        norms: np.ndarray,
        order: np.ndarray,
        owner: np.ndarray,
        pivots: np.ndarray,
        to_pivot: np.ndarray | None,
        tol: float,
    ) -> None:
        """Group rows by `owner`, an index into `pivots` (each block's pivot);
        `to_pivot` holds each row's computed squared distance to its pivot, if known."""
        count = len(owner)
        self.perm = np.argsort(owner.astype(np.int64) * count + order)
        owner = owner[self.perm]
        # The first grouping keeps the given order: no copy of the points.
        unchanged = bool((self.perm == np.arange(count)).all())
        self.points = points if unchanged else points[self.perm]
        self.norms = norms if unchanged else norms[self.perm]
        self.order = order[self.perm]
        self.starts = np.flatnonzero(np.diff(owner, prepend=-1))
        self.counts = np.diff(np.append(self.starts, count))
        self.pivots = pivots[owner[self.starts]]
        self.pivot_norms = np.einsum("ij,ij->i", self.pivots, self.pivots)
        if to_pivot is None:
            self.near = np.zeros(count, dtype=np.float32)
            self.far = np.full(count, np.inf, dtype=np.float32)
        else:
            squared = np.maximum(to_pivot[self.perm], 0.0)
            self.near = np.sqrt(np.maximum(squared - tol, 0.0))
            self.far = np.sqrt(squared + tol)

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
    never chosen again); pruning only skips updates that cannot change anything.
    `progress(done)` is called every few hundred steps.
    """
    return k_center_radius(points, size, start, progress)[0]


def k_center_radius(
    points: np.ndarray,
    size: int,
    start: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """`greedy_k_center`'s indices, and the radius they cover `points` with: the distance
    from the farthest point to its nearest chosen one (0 when every point is chosen).

    A caller that made `points` for this call alone should pass them without keeping a
    name: regrouping copies them, and the original can then be freed.
    """
    points = np.asarray(points, dtype=np.float32)
    count = points.shape[0]
    if not 0 < size <= count:
        raise ValueError(f"coreset size must be in 1..{count}, not {size}")
    # Each step's matrix-vector products are far too small to share between threads; a
    # multi-threaded BLAS only adds a wait for the other thread, which on a busy machine
    # can take milliseconds per call.
    with one_blas_thread():
        greedy = _Greedy(points, size, start)
        del points  # regrouping copies the points; a projection made for us can go then
        for step in range(size):
            greedy.step(step)
            if progress is not None and (step + 1) % 256 == 0:
                progress(step + 1)
    if progress is not None:
        progress(size)
    farthest = float(greedy.min_distances[greedy.position])
    return greedy.chosen, math.sqrt(max(farthest, 0.0))


class _Greedy:
    """The state of greedy k-center between steps, in block order."""

    def __init__(self, points: np.ndarray, size: int, start: int) -> None:
        count, dim = points.shape
        norms = np.einsum("ij,ij->i", points, points)
        # Bound on float32 rounding in |x|^2 - 2 x.c + |c|^2 (16 times the worst case for
        # a dot product of this length), added wherever a skip decision compares distances.
        self.tol = float(16 * (dim + 4) * np.finfo(np.float32).eps * norms.max())
        self.regroup_last = REGROUP_PER_SQRT * math.sqrt(count)
        self.next_regroup = REGROUP_FIRST
        self.centres = np.empty((size, dim), dtype=np.float32)
        self.centres[0] = points[start]
        # Row -> step of its nearest chosen centre, which is also its block's pivot.
        self.owner = np.zeros(count, dtype=np.int32)
        order = np.arange(count)
        self.blocks = _Blocks(points, norms, order, self.owner, self.centres, None, self.tol)
        self.min_distances = np.full(count, np.inf, dtype=np.float32)
        self.block_max = np.full(1, np.inf, dtype=np.float32)
        self.radius = np.full(1, np.inf, dtype=np.float32)
        # A block is searched when the centre's squared distance to its pivot is within
        # `limit`: (radius + the block's current largest distance)^2 plus the margin.
        self.limit = np.full(1, np.inf, dtype=np.float32)
        self.chosen = np.empty(size, dtype=np.int64)
        self.position = int(np.flatnonzero(self.blocks.order == start)[0])

    def regroup(self) -> None:
        """Blocks := the cells of the centres chosen so far; every row's stored distance is
        its distance to its owner, the new block's pivot."""
        tol = self.tol
        blocks = _Blocks(
            self.blocks.points,
            self.blocks.norms,
            self.blocks.order,
            self.owner,
            self.centres,
            self.min_distances,
            tol,
        )
        self.blocks = blocks
        self.owner = self.owner[blocks.perm]
        self.min_distances = self.min_distances[blocks.perm]
        self.block_max = np.maximum.reduceat(self.min_distances, blocks.starts)
        self.radius = np.sqrt(np.maximum(self.block_max, 0.0) + tol)
        self.limit = (2 * self.radius) ** 2 + tol
        self.position = int(np.flatnonzero(blocks.perm == self.position)[0])

    def step(self, step: int) -> None:
        """Take the current farthest row as centre `step`, update, find the next one."""
        if step == self.next_regroup and step <= self.regroup_last:
            self.next_regroup *= 2
            self.regroup()
        blocks, tol, position = self.blocks, self.tol, self.position
        self.chosen[step] = blocks.order[position]
        self.centres[step] = blocks.points[position]
        scaled_centre = self.centres[step] * np.float32(-2.0)  # exact: a power of two
        centre_norm = blocks.norms[position]
        self.min_distances[position] = -np.inf
        self.owner[position] = step
        tracking = step < self.regroup_last
        # Blocks whose pivot is near enough for the centre to be nearer to one of their
        # rows than that row's nearest centre so far (the triangle inequality).
        to_pivot = blocks.pivots @ scaled_centre
        to_pivot += blocks.pivot_norms
        to_pivot += centre_norm
        active = np.flatnonzero(to_pivot <= self.limit)
        # The centre's own block always passes; make sure rounding cannot drop it, as its
        # largest distance must be recomputed.
        own = blocks.block_of(position)
        where = int(np.searchsorted(active, own))
        if where == len(active) or active[where] != own:
            active = np.insert(active, where, own)
        rows, firsts = blocks.rows(active)
        old = self.min_distances[rows]
        # Row by row: |x - c| >= | |x - pivot| - |c - pivot| |.
        lengths = blocks.counts[active]
        centre_near = np.repeat(np.sqrt(np.maximum(to_pivot[active] - tol, 0.0)), lengths)
        centre_far = np.repeat(np.sqrt(to_pivot[active] + tol), lengths)
        gap = np.maximum(centre_near - blocks.far[rows], blocks.near[rows] - centre_far)
        need = np.flatnonzero((gap <= 0) | (gap * gap <= old + tol))
        if len(need) > len(old) // 2 and len(rows) > len(self.min_distances) // 4:
            # Most rows: update them all in place rather than gather them.
            self._update_all(scaled_centre, centre_norm, step if tracking else None)
            active = np.arange(len(self.limit))
        else:
            chosen_rows = rows[need]
            distances = blocks.points[chosen_rows] @ scaled_centre
            distances += blocks.norms[chosen_rows]
            distances += centre_norm
            previous = old[need]
            if tracking:
                self.owner[chosen_rows[distances < previous]] = step
            old[need] = np.minimum(previous, distances)
            self.min_distances[chosen_rows] = old[need]
            self.block_max[active] = np.maximum.reduceat(old, firsts)
        reach = self.radius[active] + np.sqrt(np.maximum(self.block_max[active], 0.0) + tol)
        self.limit[active] = reach * reach + tol
        self.position = blocks.first_farthest(self.min_distances, self.block_max)

    def _update_all(self, scaled_centre: np.ndarray, centre_norm: float, step: int | None) -> None:
        blocks = self.blocks
        distances = blocks.points @ scaled_centre
        distances += blocks.norms
        distances += centre_norm
        if step is not None:
            self.owner[distances < self.min_distances] = step
        np.minimum(self.min_distances, distances, out=self.min_distances)
        self.block_max = np.maximum.reduceat(self.min_distances, blocks.starts)

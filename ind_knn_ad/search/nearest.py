"""The exact nearest-neighbour search of patch features in a memory bank, and its pruned
form for an image's worst patches: NumPy only, shared by every code path.

Fitting (torch) and the command-line scorer (ONNX Runtime) both hand their patch features
to these functions, so a distance means the same thing wherever it was computed. What an
image's score is made of is the method's (`methods.patchcore.image_score`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ind_knn_ad.threads import cpu_count, one_blas_thread

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
# score is made of: their distances bound the image's score from below. More probes cost
# more full searches but tighten that bound (bench/nearest.py).
PROBES = 8
# Unit roundoff of float32. A float32 dot product of n terms, summed in any order, with or
# without fused multiply-adds, is off by at most n * u / (1 - n * u) times the sum of the
# terms' magnitudes (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1). That is
# what makes the BLAS distances safe to prune with, whatever kernel computes them.
UNIT_ROUNDOFF = 2.0**-24

Result = TypeVar("Result")


@functools.cache
def _threads(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nearest")


def _pool() -> ThreadPoolExecutor:
    """One thread per core the library may use (`threads.cpu_count`, which a cap changes)."""
    return _threads(cpu_count())


def start_threads() -> None:
    """Start the search's threads and have each map its BLAS buffer now, all at once, as a
    search does: OpenBLAS maps a buffer (up to 128 MB of address space) the first time a
    thread calls it, and ends the whole process when it cannot ("Memory allocation still
    failed"). Scoring calls this before decoding starts, so that the decoders' share of
    memory (`io.limits.decode_budget`) is measured with these already in place."""
    ready = threading.Barrier(cpu_count())

    def product(_: int) -> float:
        # A thread late: its buffer comes at its first search, as before.
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(timeout=10)
        square = np.ones((8, 8), np.float32)
        return float((square @ square)[0, 0])

    with one_blas_thread():
        list(_pool().map(product, range(cpu_count())))


@dataclass(frozen=True)
class SearchBank:
    """A memory bank ready for search: rows [b, |b|^2] for the BLAS product, and what the
    rounding bound of that product needs. Made once per model (`methods.make_scorer`):
    building it copies the bank."""

    rows: np.ndarray  # (K, C) float32, as stored
    augmented: np.ndarray  # (K, C + 1) float32
    largest_norm: float  # max |b|

    @classmethod
    def of(cls, bank: np.ndarray | SearchBank) -> SearchBank:
        """One product with rows [-2 q, 1] gives |b|^2 - 2 q.b, so the block needs no
        separate pass to add the norms."""
        if isinstance(bank, SearchBank):
            return bank
        augmented = np.empty((bank.shape[0], bank.shape[1] + 1), dtype=np.float32)
        augmented[:, :-1] = bank
        augmented[:, -1] = np.einsum("ij,ij->i", bank, bank)
        largest = float(np.sqrt(augmented[:, -1].astype(np.float64).max(initial=0.0)))
        return cls(bank, augmented, largest)

    def prefix(self, rows: int) -> SearchBank:
        return SearchBank(self.rows[:rows], self.augmented[:rows], self.largest_norm)

    def error_bound(self, query_norms: np.ndarray) -> np.ndarray:
        """A bound on |approximate - true| squared distance for queries with these |q|^2.

        |b|^2 - 2 q.b + |q|^2 comes from three float32 sums of at most C + 1 terms whose
        magnitudes add up to at most 2 (|q| + |b|)^2; twice the bound of that covers the
        final additions and the rounding of |q| itself. Float64, so it cannot overflow.
        """
        terms = self.augmented.shape[1] + 2
        norms = np.sqrt(np.maximum(query_norms.astype(np.float64), 0.0))
        return 4.0 * terms * UNIT_ROUNDOFF * (norms + self.largest_norm) ** 2


def _map_blocks(
    queries: np.ndarray,
    bank: SearchBank,
    work: Callable[[int, np.ndarray, np.ndarray], Result],
) -> list[Result]:
    """`work(first row, |b|^2 - 2 q.b block, |q|^2 of its rows)` for each block of query
    rows, in order.

    Blocks run on one thread per core, each with single-threaded BLAS: every core stays
    busy without BLAS's hand-offs between threads inside each call, which cost
    milliseconds when another process holds the other core. The block's values are
    approximate (their rounding depends on the BLAS kernel); callers use them only within
    `SearchBank.error_bound`. Adding |q|^2 is left to `work`: it does not change which bank row
    is nearest, so it is added once per query.
    """
    if len(queries) == 0:
        return []
    # At most BLOCK_ELEMENTS per block, and at least one block per thread.
    block = max(1, BLOCK_ELEMENTS // max(1, bank.augmented.shape[0]))
    block = max(1, min(block, -(-len(queries) // cpu_count())))

    def one(start: int) -> Result:
        chunk = queries[start : start + block]
        scaled = np.empty((len(chunk), bank.augmented.shape[1]), dtype=np.float32)
        np.multiply(chunk, -2.0, out=scaled[:, :-1])  # scaling by 2 is exact
        scaled[:, -1] = 1.0
        return work(start, scaled @ bank.augmented.T, np.einsum("ij,ij->i", chunk, chunk))

    starts: Sequence[int] = range(0, len(queries), block)
    with one_blas_thread():
        if len(starts) == 1:
            return [one(0)]
        return list(_pool().map(one, starts))


def _approximate(queries: np.ndarray, bank: SearchBank) -> tuple[np.ndarray, np.ndarray]:
    """Approximate squared nearest distances (float32) and a bound on their error."""

    def nearest(
        start: int, squared: np.ndarray, query_norms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return squared.min(axis=1) + query_norms, bank.error_bound(query_norms)

    blocks = _map_blocks(queries, bank, nearest)
    return (
        np.concatenate([np.empty(0, np.float32), *(s for s, _ in blocks)]),
        np.concatenate([np.empty(0), *(e for _, e in blocks)]),
    )


def exact_squared(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Squared distances between paired float32 rows, in float64 with a fixed order of
    operations: the same bits on every CPU and whatever else is computed alongside.

    Differences and squares of float32 values are single rounded float64 operations, and
    NumPy's sum along the last axis of a contiguous array adds in an order set by the row
    length alone; no BLAS is involved.
    """
    difference = queries.astype(np.float64) - rows.astype(np.float64)
    np.multiply(difference, difference, out=difference)
    return difference.sum(axis=-1)


def exact_nearest(queries: np.ndarray, bank: SearchBank) -> tuple[np.ndarray, np.ndarray]:
    """Each query's true squared distance to its nearest bank row (float64, exact_squared's
    arithmetic) and that row (the first on ties), as a search of every row would give.

    The BLAS block only picks candidates: every row whose approximate distance lies within
    twice the error bound of the smallest one. The true nearest rows are always among them.
    Near-duplicate bank rows (a bank fitted on blank images) can make most rows candidates,
    so they are measured in chunks of at most BLOCK_ELEMENTS values.
    """
    channels = bank.rows.shape[1]

    def nearest(
        start: int, squared: np.ndarray, query_norms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        limit = squared.min(axis=1) + 2.0 * bank.error_bound(query_norms)
        # Rounded up to float32, so that the comparison cannot lose a row on the boundary.
        limit = np.nextafter(limit.astype(np.float32), np.float32(np.inf))
        query, row = np.nonzero(squared <= limit[:, None])  # sorted by query, then row
        distances = np.empty(len(query))
        step = max(1, BLOCK_ELEMENTS // channels)
        for first in range(0, len(query), step):
            pairs = slice(first, first + step)
            distances[pairs] = exact_squared(queries[start + query[pairs]], bank.rows[row[pairs]])
        # The smallest distance of each query, the first row on ties.
        order = np.lexsort((row, distances, query))
        chosen = order[np.r_[True, query[order][1:] != query[order][:-1]]]
        return distances[chosen], row[chosen]

    blocks = _map_blocks(queries, bank, nearest)
    return (
        np.concatenate([np.empty(0), *(d for d, _ in blocks)]),
        np.concatenate([np.empty(0, np.int64), *(r for _, r in blocks)]),
    )


def nearest_neighbours(
    queries: np.ndarray, bank: np.ndarray | SearchBank
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest bank row (float64, exact) and
    that row's index (the first on ties)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    squared, rows = exact_nearest(queries, SearchBank.of(bank))
    return np.sqrt(squared), rows


@dataclass(frozen=True)
class WorstPatches:
    """Exact results for sorted `rows` (patches of a flat batch), a set sure to hold each
    image's worst patches: squared distances (float64) and nearest bank rows; with
    `approximate`, every patch's BLAS squared distance (float32), within its error bound."""

    rows: np.ndarray
    exact: np.ndarray
    nearest: np.ndarray
    approximate: np.ndarray | None


def worst_patches(
    flat: np.ndarray, bank: SearchBank, counted: np.ndarray, patches: int, worst: int, every: bool
) -> WorstPatches:
    """The exact distances of a set holding each image's `worst` largest counted patches,
    images being runs of `patches` rows of `flat`.

    With `every`, every patch is searched (its approximate distance comes back, for a
    map); without, a pruned search skips the patches whose upper bound cannot reach them:
    several times less work. The exact rows are found again with exact_nearest, among
    candidates that BLAS's rounding cannot hide, so they are the same bits on every CPU, in
    every batch, either way.
    """
    if every or len(bank.rows) < 2 * BOUND_SHARE:
        squared, error = _approximate(flat, bank)
        rows = _contenders(squared - error, squared + error, counted, patches, worst)
        exact, nearest = exact_nearest(flat[rows], bank)
        return WorstPatches(rows, exact, nearest, squared if every else None)
    return WorstPatches(*_pruned_search(flat, bank, counted, patches, worst), None)


def _contenders(
    lower: np.ndarray, upper: np.ndarray, counted: np.ndarray, patches: int, worst: int
) -> np.ndarray:
    """Rows (patches) that may be among their image's `worst` largest, given bounds on each
    patch's squared distance: those whose upper bound reaches the `worst`-th largest lower
    bound in their image. Counted patches only; sorted."""
    batch = len(counted) // patches
    lower = np.where(counted, lower, -np.inf).reshape(batch, patches)
    upper = np.where(counted, upper, -np.inf).reshape(batch, patches)
    kth = min(worst, patches)
    floor = np.partition(lower, patches - kth, axis=1)[:, patches - kth]
    return np.flatnonzero(((upper >= floor[:, None]) & counted.reshape(batch, patches)).ravel())


def _pruned_search(
    flat: np.ndarray, bank: SearchBank, counted: np.ndarray, patches: int, worst: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact results for a set of rows sure to hold each image's `worst` largest patches,
    searching most patches against a prefix of the bank only.

    A patch's true distance to the whole bank is at most its true distance to the prefix,
    which is at most the prefix's BLAS value plus its error bound: an upper bound. The
    exact distances of a few probe patches per image (those with the highest upper
    bounds) give a lower bound on the image's `worst`-th largest. Patches whose upper bound
    is below it cannot be among the worst, and are not searched in full.
    """
    batch = len(flat) // patches
    squared, error = _approximate(flat, bank.prefix(len(bank.rows) // BOUND_SHARE))
    upper = np.where(counted, squared + error, -np.inf).reshape(batch, patches)
    probes = min(PROBES * worst, patches)
    top = np.argpartition(upper, patches - probes, axis=1)[:, patches - probes :]
    probe_rows = np.sort((top + patches * np.arange(batch)[:, None]).ravel())
    probe_rows = probe_rows[counted[probe_rows]]
    probed, probe_nearest = exact_nearest(flat[probe_rows], bank)
    # Each image's `worst`-th largest probed distance (-inf with fewer counted probes).
    floor = np.full(batch, -np.inf)
    for image in range(batch):
        mine = probed[probe_rows // patches == image]
        if len(mine) >= worst:
            floor[image] = np.sort(mine)[len(mine) - worst]
    keep = counted & (upper.ravel() >= np.repeat(floor, patches))
    keep[probe_rows] = False  # searched already
    rest = np.flatnonzero(keep)
    exact, nearest = exact_nearest(flat[rest], bank)
    rows = np.concatenate([probe_rows, rest])
    order = np.argsort(rows, kind="stable")
    return (
        rows[order],
        np.concatenate([probed, exact])[order],
        np.concatenate([probe_nearest, nearest])[order],
    )

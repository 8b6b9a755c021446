"""Greedy k-center over rows that arrive in chunks and are never all held: the composable
coreset of search/two_stage.py with its chunks given by the stream.

Each chunk's greedy k-center keeps OVERSAMPLE times the chunk's share of the bank (its rows'
share of all rows, known up front), as full rows and projected ones; greedy k-center on the
union of those picks then picks the bank. Memory holds one chunk and the union (OVERSAMPLE
times the bank), whatever the number of rows; the work is about OVERSAMPLE x size x
(rows per chunk + size). Every row is within r1 + r2 of the bank (r1 its chunk's radius,
r2 the second stage's), as in two_stage.py; what two_stage.py's top-up adds needs the
chunks again, which a stream no longer has (bench/stream_fit.py measures the result).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ind_knn_ad.search.coreset import project
from ind_knn_ad.search.k_center import k_center_radius, start_index
from ind_knn_ad.search.two_stage import OVERSAMPLE


class StreamedCoreset:
    """Picks `size` of `total` rows of D channels handed over in order by `add`.

    Projection and seeds are those of `coreset.greedy_coreset`, each chunk seeded by its
    first row, so a stream cut the same way picks the same bank; a stream of one chunk
    picks plain greedy's.
    """

    def __init__(self, total: int, size: int, projection_dim: int, seed: int) -> None:
        if not 0 < size <= total:
            raise ValueError(f"coreset size must be in 1..{total}, not {size}")
        self.total, self.size = total, size
        self.projection_dim, self.seed = projection_dim, seed
        self.seen = 0
        self._rows: list[np.ndarray] = []
        self._points: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        """The next (n, D) rows: greedy k-center keeps their share of the union."""
        count = len(rows)
        if self.seen + count > self.total:
            raise ValueError(f"more than the {self.total} rows announced")
        share = min(count, math.ceil(OVERSAMPLE * self.size * count / self.total))
        seed = self.seed + 1 + self.seen
        if count == self.total:  # one chunk: plain greedy's bank, no union to pick from
            share, seed = self.size, self.seed
        points = project(rows, self.projection_dim, self.seed)
        if share < count:
            found = np.sort(k_center_radius(points, share, start_index(count, seed))[0])
        else:
            found = np.arange(count)
        self._rows.append(np.array(rows[found], dtype=np.float32))
        self._points.append(points[found])
        self._indices.append(self.seen + found)
        self.seen += count

    def finish(
        self, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bank's (size, D) rows and their indices among all rows, in row order."""
        if self.seen != self.total:
            raise ValueError(f"{self.seen} of the {self.total} rows announced were added")
        indices = np.concatenate(self._indices)
        points, self._points = np.concatenate(self._points), []
        found = np.arange(len(indices))
        if self.size < len(indices):
            start = start_index(len(indices), self.seed)
            found = np.sort(k_center_radius(points, self.size, start, progress)[0])
        rows, self._rows = np.concatenate(self._rows), []
        return rows[found], indices[found]

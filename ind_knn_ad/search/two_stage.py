"""Greedy k-center in two stages, for banks whose plain greedy would cost too much
(search/coreset.py, GREEDY_WORK; bench/budget.py).

A composable coreset (Indyk, Mahabadi, Mahdian and Mirrokni, PODS 2014): the rows are cut
into contiguous chunks of whole images; greedy k-center picks OVERSAMPLE times each chunk's
share of the bank from that chunk; greedy k-center on the union of those picks picks the
bank. Plain greedy's work, about rows x size, becomes about OVERSAMPLE x size x (rows per
chunk + size); with about rows / size chunks both stages do the same share of it.

How well the bank covers the rows: write r* for the smallest radius that any `size` points
cover every row with. Greedy k-center covers any point set within twice the best radius
for that set (Gonzalez 1985), and the union's best radius is at most r*, so the second
stage covers the union within r2 <= 2 r*. A chunk that its picks cover more than TOP_UP
times as coarsely as r2 gets more picks, twice as many at a time, until they cover it
within TOP_UP r2 or it has `size` of them (then within 2 r*, by the same argument), and
the second stage runs again on the larger union. Every row is then within r1 + r2 of the
bank (through its chunk's nearest pick), r1 <= 2 TOP_UP r* and r2 <= 2 r*: with TOP_UP 2,
within 6 r*, so at worst 6 times plain greedy's radius, which is at least r*. Where the
top-ups would more than double the union, the rows do not chunk well (every image the
same few patches, a bank larger than the distinct patches) and plain greedy runs after
all. tests/test_two_stage.py measures the ratio on inputs made to hurt chunking, and
bench/budget.py on real features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ind_knn_ad.search.k_center import k_center_radius, start_index

# Each chunk gives this many times its share of the bank to the second stage: more picks
# cover each chunk more finely (the radius bound above adds the chunks' radius to the
# second stage's), at the cost of a longer second stage.
OVERSAMPLE = 4
# A chunk gets more picks when they cover it more than this many times as coarsely as the
# second stage covers the union. At 1 the bound below is tightest, but redundant inputs
# (many images of one part) have almost every chunk a little coarser than the union, as
# each chunk has a fraction of the picks for the same content: nearly every chunk would
# be topped up, at more than plain greedy's work (bench/budget.py, tests/test_two_stage.py).
TOP_UP = 2.0


def worth_two_stages(count: int, size: int) -> bool:
    """Whether two stages do at most half of plain greedy's work (count x size): when the
    union is small beside the rows. Larger fractions are left to plain greedy."""
    return 4 * OVERSAMPLE * size <= count


def chunk_bounds(count: int, size: int, image_rows: int = 1) -> np.ndarray:
    """Row offsets of about count / size contiguous chunks (at least 2), each of whole
    images of `image_rows` rows where there are that many images."""
    chunks = max(2, round(count / size))
    unit = image_rows if count % image_rows == 0 and count // image_rows >= chunks else 1
    units = count // unit
    return unit * np.linspace(0, units, min(chunks, units) + 1).round().astype(np.int64)


def two_stage_k_center(
    points: np.ndarray,
    size: int,
    seed: int,
    image_rows: int = 1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Indices of `size` rows of (N, d) float32 `points`: greedy k-center on the union of
    each chunk's greedy k-center (module docstring). Deterministic for a seed."""
    count = len(points)
    bounds = chunk_bounds(count, size, image_rows)
    rows = np.diff(bounds)
    shares = np.minimum(rows, np.ceil(OVERSAMPLE * size * rows / count).astype(np.int64))
    bar = _Bar(progress, size, int((rows * shares).sum()) + OVERSAMPLE * size * size)
    picks: list[np.ndarray] = []
    radii = np.empty(len(rows))
    for chunk in range(len(rows)):
        found, radii[chunk] = _chunk(points, bounds, chunk, int(shares[chunk]), seed, bar)
        picks.append(found)
    chosen, radius = _second_stage(points, picks, size, seed, bar)
    # Chunks covered far less well than the second stage covers the union get more picks
    # (the bound in the module docstring); inputs that chunk well never need them.
    enough = TOP_UP * radius
    if (radii > enough).any():
        if not _top_up(points, bounds, shares, picks, radii, enough, seed, bar):
            # The rows chunk badly: plain greedy after all, at about 1.5 times its work.
            bar.expect(count * size)
            start = start_index(count, seed)
            chosen = k_center_radius(points, size, start, bar.part(count))[0]
        else:
            bar.expect(size * sum(len(found) for found in picks))
            chosen = _second_stage(points, picks, size, seed, bar)[0]
    bar.finish()
    return chosen


def _top_up(
    points: np.ndarray,
    bounds: np.ndarray,
    shares: np.ndarray,
    picks: list[np.ndarray],
    radii: np.ndarray,
    enough: float,
    seed: int,
    bar: _Bar,
) -> bool:
    """Twice the picks at a time for each chunk covered less well than `enough`, until
    they cover it within that or it has the bank's size of them; False, leaving off,
    once the union would outgrow twice the planned one."""
    size = bar.size
    rows = np.diff(bounds)
    for chunk in np.flatnonzero(radii > enough):
        limit = min(int(rows[chunk]), size)
        while radii[chunk] > enough and shares[chunk] < limit:
            more = min(limit, 2 * int(shares[chunk]))
            if shares.sum() + more - shares[chunk] > 2 * OVERSAMPLE * size:
                return False
            shares[chunk] = more
            bar.expect(int(rows[chunk]) * more)
            picks[chunk], radii[chunk] = _chunk(points, bounds, chunk, more, seed, bar)
    return True


def _chunk(
    points: np.ndarray, bounds: np.ndarray, chunk: int, share: int, seed: int, bar: _Bar
) -> tuple[np.ndarray, float]:
    """Greedy k-center's `share` picks of one chunk (row indices of `points`), and the
    radius they cover the chunk with."""
    first, end = int(bounds[chunk]), int(bounds[chunk + 1])
    start = start_index(end - first, seed + 1 + chunk)
    found, radius = k_center_radius(points[first:end], share, start, bar.part(end - first))
    return first + found, radius


def _second_stage(
    points: np.ndarray, picks: list[np.ndarray], size: int, seed: int, bar: _Bar
) -> tuple[np.ndarray, float]:
    """Greedy k-center's `size` picks of the union (in row order, so ties go to the lowest
    row as in plain greedy), as row indices of `points`, and their radius on the union."""
    union = np.sort(np.concatenate(picks))
    start = start_index(len(union), seed)
    found, radius = k_center_radius(points[union], size, start, bar.part(len(union)))
    return union[found], radius


class _Bar:
    """One progress bar of `size` steps for every stage: the work done (rows x picks) as a
    share of the work expected so far, never going back, full only at the end."""

    def __init__(self, callback: Callable[[int], None] | None, size: int, expected: int):
        self.callback, self.size, self.expected = callback, size, expected
        self.done = self.shown = 0

    def expect(self, work: int) -> None:
        self.expected += work

    def part(self, rows: int) -> Callable[[int], None] | None:
        """The callback of one greedy run over `rows` rows."""
        if self.callback is None:
            return None
        before = self.done

        def advance(steps: int) -> None:
            self.done = before + rows * steps
            shown = min(self.size - 1, math.floor(self.size * self.done / self.expected))
            if shown > self.shown:
                self.shown = shown
                self.callback(shown)

        return advance

    def finish(self) -> None:
        if self.callback is not None and self.shown < self.size:
            self.shown = self.size
            self.callback(self.size)

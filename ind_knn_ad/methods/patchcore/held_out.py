"""Held-out scoring on a PatchCore memory bank: a training image, or any features made from
it, scored against the bank without that image's own patches.

This is leave-one-image-out on the fitted bank: the image is judged as a new good image
would be, at the cost of one nearest-neighbour search per image and no refit. But the
coreset was chosen with the image in it, and where only it had patches, its rows are the
only cover: taken out, they leave holes that a coreset chosen without the image would have
covered with other images' patches. So each of its rows is replaced by the nearest patch of
another training image (`fill_holes`); without this the held-out scores sat too high and
the threshold missed defects (bench/held_out.py). A whole bank has no holes: there the
replacements are rows it already holds (`HeldOut.bank_without`).

One rule for every caller: the automatic threshold's held-out scores (`training_scores`),
the synthetic defects of `calibration.detectability` and the automatic settings'
validation (`tuning.autosettings`), so that the settings are chosen on the scores the
threshold is then placed on.
"""

from __future__ import annotations

import functools

import numpy as np

from ind_knn_ad.errors import DatasetError
from ind_knn_ad.methods.patchcore.image_score import score_features
from ind_knn_ad.search.coreset import seeded_sample
from ind_knn_ad.search.nearest import SearchBank

# Training images scored for the automatic threshold, at most: enough for a stable mean and
# standard deviation, few enough that a fit on thousands of images is not dominated by it.
HOLDOUT_IMAGES = 200
# Training images searched for the patches that fill a held-out image's holes in the bank:
# enough to find a close cover, few enough to keep the search a small part of the fit
# (bench/held_out.py).
FILL_IMAGES = 64
_ROWS = 4096  # bank rows measured against one image's patches at a time


class HeldOut:
    """A memory bank and, for each of its rows, the patch that covers its place when its
    image is held out (computed on first need: the fill is a search of its own).

    `train_features` are (images, patches, C), an image's views (`augment`) after its own
    h*w patches (`extractor.TrainFeatures`); `bank` holds distinct rows of them, `sources`
    each row's image; `seed` draws the images searched for fillers and the images scored
    by `training_scores`. A held-out image takes its views with it, and other images'
    views may fill its holes.
    """

    def __init__(
        self,
        train_features: np.ndarray | SampledFeatures,
        bank: np.ndarray,
        sources: np.ndarray,
        seed: int = 0,
    ) -> None:
        self.train_features = train_features
        self.bank = bank
        self.sources = sources
        self.seed = seed
        images, patches, _channels = train_features.shape
        self.whole = images > 1 and len(bank) == images * patches
        self._image = -1
        self._banks: dict[bool, SearchBank] = {}

    @functools.cached_property
    def fillers(self) -> np.ndarray:
        return fill_holes(self.train_features, self.bank, self.sources, self.seed)

    def bank_without(self, image: int, rule: str) -> SearchBank:
        """The bank without `image`'s rows, their fillers in their place (at the end).

        A whole bank (every training patch) has no holes: its fillers are rows it still
        holds. The max and top10 scores are exact nearest distances, which duplicates cannot
        change, so there they are left out and the fill's search is saved; the reweighted
        score weighs the nearest row's neighbours in the bank, duplicates included, so it
        keeps them. The last image's banks are kept: callers score one image under several
        rules in a row.
        """
        filled = rule == "reweighted" or not self.whole
        if image != self._image:
            self._image, self._banks = image, {}
        if filled not in self._banks:
            own = self.sources == image
            rows = np.concatenate([self.bank[~own], self.fillers[own]]) if filled else None
            self._banks[filled] = SearchBank.of(self.bank[~own] if rows is None else rows)
        return self._banks[filled]

    def scores(
        self,
        features: np.ndarray,
        image: int,
        rule: str,
        regions: np.ndarray | None = None,
    ) -> list[float]:
        """Image scores of (B, C, h, w) `features` made from training image `image` (the
        image itself or damaged copies of it) against the bank without it; `regions`
        ((B, h, w) bool) are the patches counted, as `score_features` takes them."""
        results = score_features(
            features, self.bank_without(image, rule), rule, maps=False, regions=regions
        )
        return [result.score for result in results]

    def training_scores(
        self,
        grid: tuple[int, int],
        rule: str,
        regions: np.ndarray | None = None,
        limit: int = HOLDOUT_IMAGES,
    ) -> np.ndarray:
        """The automatic threshold's held-out scores: each training image alone (not its
        views) against the bank without it.

        The bank grows with the training set, so scoring every image would cost time
        quadratic in it; beyond `limit` images a seeded random `limit` of them are scored.
        `regions` ((images, h*w) bool) are the patches each image is scored on, as scoring
        will.
        """
        count, _patches, channels = self.train_features.shape
        positions = grid[0] * grid[1]
        images = scored_images(count, self.seed, limit)
        scores = np.empty(len(images), dtype=np.float64)
        for slot, image in enumerate(images):
            patches = self.train_features[image, :positions]  # the image, not its views
            features = patches.reshape(1, *grid, channels).transpose(0, 3, 1, 2)
            counted = None if regions is None else regions[image].reshape(1, *grid)
            (scores[slot],) = self.scores(features, int(image), rule, counted)
        if not np.isfinite(scores).all():
            raise DatasetError("training images score as infinite: their features overflow float32")
        return scores


def fill_holes(
    train_features: np.ndarray | SampledFeatures,
    bank: np.ndarray,
    bank_sources: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """For each bank row, the nearest patch of another training image than its own (or of
    its views), among at most FILL_IMAGES seeded ones: what covers its place when its image
    is held out."""
    count, _patches, channels = train_features.shape
    searched = filler_images(count, seed)
    rows = np.asarray(bank, np.float32)
    best = np.full(len(rows), np.inf)
    fillers = rows.copy()  # a row whose image is the only one searched keeps itself
    for image in searched:
        patches = train_features[image]
        squares = np.einsum("ij,ij->i", patches, patches)
        for start in range(0, len(rows), _ROWS):
            block = slice(start, start + _ROWS)
            distances = squares[None, :] - 2.0 * (rows[block] @ patches.T)
            nearest = np.argmin(distances, axis=1)
            value = distances[np.arange(len(nearest)), nearest]
            better = (value < best[block]) & (bank_sources[block] != image)
            best[block] = np.where(better, value, best[block])
            fillers[block][better] = patches[nearest[better]]
    return fillers.reshape(-1, channels)


def scored_images(count: int, seed: int, limit: int = HOLDOUT_IMAGES) -> np.ndarray:
    """The training images whose own patches `HeldOut.training_scores` scores."""
    return seeded_sample(count, limit, seed)


def filler_images(count: int, seed: int) -> np.ndarray:
    """The training images whose every row (views included) `fill_holes` searches."""
    return seeded_sample(count, FILL_IMAGES, seed)


class SampledFeatures:
    """Training features, (images, rows, C), of which some images alone are held, indexed as
    the whole array would be (`features[image]`, `features[image, :positions]`): what
    `HeldOut` reads of a streamed fit (`methods.patchcore.streamed`). Asking for an image
    that is not held is an IndexError, never a silent stand-in."""

    def __init__(self, shape: tuple[int, int, int], held: dict[int, np.ndarray]) -> None:
        self.shape = shape
        self.held = held

    def __getitem__(self, key: int | tuple[int, slice]) -> np.ndarray:
        image, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows = self.held.get(int(image))
        if rows is None:
            raise IndexError(f"training image {image} is not held")
        return rows[rest] if rest else rows

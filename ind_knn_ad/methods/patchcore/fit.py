"""PatchCore's fit: the greedy coreset of the training patches, and the held-out scores
of the threshold and the synthetic defects."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from ind_knn_ad.calibration import detectability
from ind_knn_ad.errors import ConfigError
from ind_knn_ad.io.alignment import part_regions
from ind_knn_ad.methods.fitting import Fitted, Fitter, ProgressFactory
from ind_knn_ad.methods.patchcore import BANK
from ind_knn_ad.methods.patchcore.held_out import HeldOut
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset

if TYPE_CHECKING:
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures


class PatchCoreFitter(Fitter):
    takes_views = True  # the bank pools patches from every position and image
    streams = True  # the bank's coreset composes over chunks (`patchcore.streamed`)

    def check_fit(self, settings: FitConfig, patches: int, auto_threshold: bool) -> None:
        """A bank of one patch measures every image by its distance to that patch: nothing a
        user can mean, and the held-out threshold would rest on it alone."""
        if not auto_threshold or coreset_size(patches, settings.coreset) >= 2:
            return
        least = _round_up(2 / patches)
        raise ConfigError(
            f"coreset {settings.coreset:g} keeps 1 of about {patches} patches: a one-patch "
            "bank tells nothing apart, and the automatic threshold needs at least 2. Use a "
            f"coreset of {least:g} or more, or a fixed threshold",
            setting="coreset",
        )

    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        """The greedy coreset of every training patch, views included (`augment`): the
        coreset fraction, and the rule without one, count the views' patches too, so that
        `--coreset 1.0` keeps every one (issue 26, item 9; the bank once kept as many rows as
        without views, whatever the fraction)."""
        images, patches, _channels = train.features.shape
        # A streamed fit chose its bank on the way (`patchcore.streamed`).
        bank, sources = train.bank or self._coreset(train, settings, progress)

        @functools.cache
        def held() -> HeldOut:
            return HeldOut(train.features, bank, sources, settings.seed)

        def held_out() -> np.ndarray:
            return held().training_scores(train.grid, image_score, train.regions)

        def synthetic(model: Model, extractor: FeatureExtractor) -> list[detectability.Damaged]:
            if not train.paths:
                return []
            return self._synthetic(extractor, train, held(), settings, image_score)

        coreset = {
            "fraction": settings.coreset,
            "size": len(bank),
            "total_patches": images * patches,
            "projection_dim": settings.projection_dim,
            "seed": settings.seed,
            **({"streamed": True} if train.bank is not None else {}),
        }
        return Fitted({BANK: bank}, {"coreset": coreset}, held_out, synthetic)

    def _coreset(
        self, train: TrainFeatures, settings: FitConfig, progress: ProgressFactory
    ) -> tuple[np.ndarray, np.ndarray]:
        """The greedy coreset of every training patch, and the training image each of its
        rows came from: a view's patches belong to its image, so a held-out image takes its
        views with it."""
        images, patches, channels = train.features.shape
        flat = train.features.reshape(-1, channels)
        size = coreset_size(images * patches, settings.coreset, patches)
        with progress("Coreset selection", size) as callback:
            chosen = greedy_coreset(
                flat, size, settings.projection_dim, settings.seed, callback, image_rows=patches
            )
        return np.ascontiguousarray(flat[chosen]), chosen // patches

    def _synthetic(
        self,
        extractor: FeatureExtractor,
        train: TrainFeatures,
        held: HeldOut,
        settings: FitConfig,
        image_score: str,
    ) -> list[detectability.Damaged]:
        """Synthetic defects on held-out training images, scored as the threshold's
        held-out images are (`patchcore.held_out`), on the part alone where aligned."""

        def held_out(features: np.ndarray, cuts: np.ndarray, image: int) -> list[float]:
            regions = None
            if settings.preprocess.align is not None:
                regions = part_regions(cuts, (features.shape[2], features.shape[3]))
            return held.scores(features, image, image_score, regions)

        return detectability.damaged_scores(
            train.paths, settings.preprocess, extractor, held_out, settings.seed
        )


FITTER = PatchCoreFitter()


def _round_up(value: float) -> float:
    """`value` rounded up to two significant digits."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale

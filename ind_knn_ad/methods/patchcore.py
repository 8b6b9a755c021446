"""PatchCore (Roth et al. 2022): a coreset memory bank of training patches; each patch's
score is its distance to the nearest bank patch.

The search itself lives in `scoring` (NumPy), shared by the fit's held-out scores and by
scoring on the exported ONNX graph's features, so a score means the same everywhere.
Stored: `memory_bank` (K, C) float32, the coreset in selection order.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ind_knn_ad.calibration import detectability
from ind_knn_ad.cli.exit_codes import UsageError
from ind_knn_ad.features.augment import NONE
from ind_knn_ad.io.alignment import part_regions
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import (
    Fitted,
    Method,
    ProgressFactory,
    Scorer,
    TensorSpec,
    features_only,
)
from ind_knn_ad.methods.patchcore_held_out import HeldOut
from ind_knn_ad.model_file.store import Model
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset
from ind_knn_ad.search.nearest import IMAGE_SCORES, PatchScores, SearchBank, score_features

if TYPE_CHECKING:
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures

BANK = "memory_bank"


class PatchCore(Method):
    name = "patchcore"
    image_scores = IMAGE_SCORES
    map_in_score_units = True  # the image score is a patch distance, as the map's are
    takes_views = True  # the bank pools patches from every position and image
    required_settings = {"coreset": dict}  # noqa: RUF012 - read only

    def check_fit(self, settings: FitConfig, patches: int, auto_threshold: bool) -> None:
        """A bank of one patch measures every image by its distance to that patch: nothing a
        user can mean, and the held-out threshold would rest on it alone."""
        if not auto_threshold or coreset_size(patches, settings.coreset_fraction) >= 2:
            return
        least = _round_up(2 / patches)
        raise UsageError(
            f"--coreset {settings.coreset_fraction:g} keeps 1 of about {patches} patches: a "
            "one-patch bank tells nothing apart, and the automatic threshold needs at least "
            f"2. Use --coreset {least:g} or more, or a fixed --threshold"
        )

    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        """The greedy coreset of every training patch, views included (`augment`), with as
        many rows as without views, so that scoring costs the same."""
        images, patches, channels = train.features.shape
        flat = train.features.reshape(-1, channels)
        size = coreset_size(images * patches // train.views, settings.coreset_fraction)
        with progress("Coreset selection", size) as callback:
            chosen = greedy_coreset(flat, size, settings.projection_dim, settings.seed, callback)
        bank = np.ascontiguousarray(flat[chosen])
        # The training image each bank patch came from: a view's patches belong to its
        # image, so a held-out image takes its views with it.
        sources = chosen // patches

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
            "fraction": settings.coreset_fraction,
            "size": int(size),
            "total_patches": int(flat.shape[0]),
            "projection_dim": settings.projection_dim,
            "seed": settings.seed,
        }
        return Fitted({BANK: bank}, {"coreset": coreset}, held_out, synthetic)

    def _synthetic(
        self,
        extractor: FeatureExtractor,
        train: TrainFeatures,
        held: HeldOut,
        settings: FitConfig,
        image_score: str,
    ) -> list[detectability.Damaged]:
        """Synthetic defects on held-out training images, scored as the threshold's
        held-out images are (`patchcore_held_out`), on the part alone where aligned."""

        def held_out(features: np.ndarray, cuts: np.ndarray, image: int) -> list[float]:
            regions = None
            if settings.preprocess.align is not None:
                regions = part_regions(cuts, (features.shape[2], features.shape[3]))
            return held.scores(features, image, image_score, regions)

        return detectability.damaged_scores(
            train.paths, settings.preprocess, extractor, held_out, settings.seed
        )

    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]:
        return {BANK: TensorSpec(np.float32, (None, settings["feature_dim"]), "memory bank")}

    def scorer(self, model: Model, preprocess: Preprocess, maps: bool) -> Scorer:
        """An aligned part is scored on the part alone (`alignment.part_regions`, found on
        the cuts); otherwise every patch counts."""
        bank = SearchBank.of(model.tensors[BANK])
        rule = model.settings["image_score"]
        score = functools.partial(score_features, bank=bank, image_score=rule, maps=maps)
        if preprocess.align is None:
            return features_only(score)

        def on_the_part(features: np.ndarray, cuts: np.ndarray) -> list[PatchScores]:
            regions = part_regions(cuts, (features.shape[2], features.shape[3]))
            return score(features, regions=regions)

        return on_the_part

    def summary(self, model: Model) -> str:
        kept = model.tensors[BANK].shape[0]
        total = model.settings["coreset"]["total_patches"]
        augment = model.settings.get("augment", NONE)
        views = "" if augment == NONE else f" (images and their views, --augment {augment})"
        return f"Memory bank: {kept} of {total} patches{views}"


def _round_up(value: float) -> float:
    """`value` rounded up to two significant digits."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale

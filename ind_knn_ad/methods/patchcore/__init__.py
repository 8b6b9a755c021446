"""PatchCore (Roth et al. 2022): a coreset memory bank of training patches; each patch's
score is its distance to the nearest bank patch.

The search itself lives in `search.nearest` (NumPy), shared by the fit's held-out scores
and by scoring on the exported ONNX graph's features, so a score means the same everywhere;
the image-score rules in `image_score`, the fit in `fit`. Stored: `memory_bank` (K, C)
float32, the coreset in selection order.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ind_knn_ad.io.alignment import part_regions
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import Method, PatchScores, Scorer, features_only
from ind_knn_ad.methods.patchcore.image_score import IMAGE_SCORES, score_features
from ind_knn_ad.model_file.schema import Model, TensorSpec
from ind_knn_ad.search.nearest import SearchBank

BANK = "memory_bank"


class PatchCore(Method):
    name = "patchcore"
    image_scores = IMAGE_SCORES
    map_in_score_units = True  # the image score is a patch distance, as the map's are
    required_settings = {"coreset": dict}  # noqa: RUF012 - read only
    fit_module = "ind_knn_ad.methods.patchcore.fit"
    auto_settings = True

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
        augment = model.settings.get("augment")  # stored only when views were added
        views = "" if augment is None else f" (images and their views, --augment {augment})"
        return f"Memory bank: {kept} of {total} patches{views}"

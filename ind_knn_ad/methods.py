"""One scoring interface for the three methods: (B, C, h, w) features and the (B, 3, H, W)
preprocessed images they came from -> list[PatchScores].

Scoring (`runtime`), evaluation and the contact sheet take a scorer from here and never
ask which method made the model. NumPy only, like everything on the scoring path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .alignment import part_regions
from .images import Preprocess
from .model_file import Model, ModelFileError
from .padim import PadimScorer
from .scoring import IMAGE_SCORES, PatchScores, SearchBank, score_features
from .spade import SpadeScorer

Scorer = Callable[[np.ndarray, np.ndarray], list[PatchScores]]

# The image-score rules each method knows; the model file names the one it was fitted with.
IMAGE_SCORE_RULES: dict[str, tuple[str, ...]] = {
    "patchcore": IMAGE_SCORES,
    "padim": ("max",),
    "spade": ("knn_mean",),
}


def make_scorer(model: Model, preprocess: Preprocess, maps: bool = True) -> Scorer:
    """The scorer for a loaded (validated) model whose preprocess settings the caller has
    parsed; ModelFileError for an unknown image score.

    With `maps=False` the results may come without patch maps (None) where leaving them
    out saves work (PatchCore's pruned search, SPADE's pixel-level kNN); scores are the same.
    PatchCore scores an aligned part on the part alone (`alignment.part_regions`, found on
    the images); PaDiM and SPADE score every patch of their input.
    """
    method, rule = model.method, model.settings["image_score"]
    if rule not in IMAGE_SCORE_RULES[method]:
        raise ModelFileError(f"unknown image score {rule!r} for {method}")
    if method == "padim":
        tensors = model.tensors
        return _features_only(
            PadimScorer(tensors["channels"], tensors["mean"], tensors["inverse_covariance"])
        )
    if method == "spade":
        neighbours = model.settings["spade"]["neighbours"]
        return _features_only(
            SpadeScorer(
                model.tensors["train_patches"], model.tensors["image_vectors"], neighbours, maps
            )
        )
    bank = SearchBank.of(model.tensors["memory_bank"])
    score = functools.partial(score_features, bank=bank, image_score=rule, maps=maps)
    if preprocess.align is None:
        return _features_only(score)

    def on_the_part(features: np.ndarray, images: np.ndarray) -> list[PatchScores]:
        grid = (features.shape[2], features.shape[3])
        return score(features, regions=part_regions(images, preprocess.mean, preprocess.std, grid))

    return on_the_part


def _features_only(score: Callable[[np.ndarray], list[PatchScores]]) -> Scorer:
    """A scorer that needs the features alone."""

    def scorer(features: np.ndarray, _images: np.ndarray) -> list[PatchScores]:
        return score(features)

    return scorer

"""One scoring interface for the three methods: (B, C, h, w) features -> list[PatchScores].

Scoring (`runtime`), evaluation and the contact sheet take a scorer from here and never
ask which method made the model. NumPy only, like everything on the scoring path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .model_file import Model, ModelFileError
from .padim import PadimScorer
from .scoring import IMAGE_SCORES, PatchScores, score_features
from .spade import SpadeScorer

Scorer = Callable[[np.ndarray], list[PatchScores]]

# The image-score rules each method knows; the model file names the one it was fitted with.
IMAGE_SCORE_RULES: dict[str, tuple[str, ...]] = {
    "patchcore": IMAGE_SCORES,
    "padim": ("max",),
    "spade": ("knn_mean",),
}


def make_scorer(model: Model, maps: bool = True) -> Scorer:
    """The scorer for a loaded (validated) model; ModelFileError for an unknown image score.

    With `maps=False` the results may come without patch maps (None) where leaving them
    out saves work (PatchCore's pruned search, SPADE's pixel-level kNN); scores are the same.
    """
    method, rule = model.method, model.settings["image_score"]
    if rule not in IMAGE_SCORE_RULES[method]:
        raise ModelFileError(f"unknown image score {rule!r} for {method}")
    if method == "padim":
        tensors = model.tensors
        return PadimScorer(tensors["channels"], tensors["mean"], tensors["inverse_covariance"])
    if method == "spade":
        neighbours = model.settings["spade"]["neighbours"]
        return SpadeScorer(
            model.tensors["train_patches"], model.tensors["image_vectors"], neighbours, maps
        )
    bank = model.memory_bank
    assert bank is not None  # load_model guarantees it for PatchCore
    norms = np.einsum("ij,ij->i", bank, bank)
    return functools.partial(
        score_features, bank=bank, image_score=rule, bank_norms=norms, maps=maps
    )

"""The scoring side every method has, so that the model file, scoring, heatmaps and the
reports never ask which method they hold.

A method names and checks the tensors it stores, builds its scorer and says how to read its
maps. Its fit is apart (`methods.fitting.Fitter`, in the module `Method.fit_module` names)
and loaded only by the fit, so that scoring imports no fit code. NumPy only: scoring
imports every registered method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.schema import Model, TensorSpec


@dataclass(frozen=True)
class PatchScores:
    """One image's result: its score and the (h, w) grid of patch distances (None when it
    was not asked for)."""

    score: float
    patch_map: np.ndarray | None


# (B, C, h, w) features and the (B, H, W, 3) uint8 cuts their network inputs were made
# from -> one result per image. Scoring, evaluation and the contact sheet see only this.
Scorer = Callable[[np.ndarray, np.ndarray], list[PatchScores]]


class Method(ABC):
    """One anomaly-detection method as scoring sees it: its stored tensors, its scorer."""

    name: ClassVar[str]
    # The image-score rules its scorer knows; the first is what a default fit stores.
    image_scores: ClassVar[tuple[str, ...]]
    # Whether its patch maps are in the units of its image score, so that a heatmap's
    # colour bar can run up to the threshold.
    map_in_score_units: ClassVar[bool]
    # Settings its model files must hold beyond the shared ones, with their JSON types.
    required_settings: ClassVar[dict[str, type]]
    # The module holding its fit: a `FITTER` (`methods.fitting.Fitter`), imported by
    # `methods.fitter` for a fit only.
    fit_module: ClassVar[str]
    # Whether make_model.py's automatic settings (`--settings auto`) search its settings.
    auto_settings: ClassVar[bool] = False

    @abstractmethod
    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]:
        """Each tensor a model file of this method holds, given its (validated) settings;
        ModelFileError, naming `source`, for method settings out of range."""

    def check_tensors(  # noqa: B027 - an optional check: most methods have none
        self, settings: dict[str, Any], tensors: dict[str, np.ndarray], source: str
    ) -> None:
        """ModelFileError for tensor values scoring cannot trust, beyond the types, shapes
        and finite values every method's tensors are checked for."""

    @abstractmethod
    def scorer(self, model: Model, preprocess: Preprocess, maps: bool) -> Scorer:
        """The scorer of a loaded (validated) model. With `maps=False` results may come
        without patch maps where leaving them out saves work; scores are the same."""

    @abstractmethod
    def summary(self, model: Model) -> str:
        """What the fit kept, in one phrase (make_model.py prints it)."""


def features_only(score: Callable[[np.ndarray], list[PatchScores]]) -> Scorer:
    """A scorer that needs the features alone."""

    def scorer(features: np.ndarray, _cuts: np.ndarray) -> list[PatchScores]:
        return score(features)

    return scorer

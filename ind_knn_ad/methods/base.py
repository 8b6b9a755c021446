"""The one shape every method has, so that fitting, the model file, scoring, heatmaps and
make_model.py never ask which method they hold.

A method fits on the patch features every method shares (`extractor.TrainFeatures`), names
and checks the tensors it stores, builds its scorer and says how to read its maps. NumPy
only at import time: scoring imports every registered method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import Model
from ind_knn_ad.search.nearest import IMAGE_SCORES, PatchScores

if TYPE_CHECKING:
    from ind_knn_ad.calibration.detectability import Damaged
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures

# (B, C, h, w) features and the (B, H, W, 3) uint8 cuts their network inputs were made
# from -> one result per image. Scoring, evaluation and the contact sheet see only this.
Scorer = Callable[[np.ndarray, np.ndarray], list[PatchScores]]
# (stage description, total) -> context yielding a callback that takes "items done".
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None] | None]]
# What a fit asks for unless told otherwise; every method takes it, as its own rule.
DEFAULT_IMAGE_SCORE = IMAGE_SCORES[0]


@dataclass(frozen=True)
class TensorSpec:
    """A stored tensor's type and shape (None: any size above 0), and what messages call
    it (its name when empty)."""

    dtype: type
    shape: tuple[int | None, ...]
    label: str = ""


@dataclass
class Fitted:
    """What a method made of the training features.

    `settings` are its own settings, merged into the model's; `holdout_scores` gives each
    (sampled) training image's score against the model without it, called only for the
    automatic threshold since it may cost a search per image; `synthetic`, when set, scores
    synthetic defects on held-out training images with the model (before its threshold is
    set) and the feature network: what the model can see, and with few training images
    where the threshold goes.
    """

    tensors: dict[str, np.ndarray]
    settings: dict[str, Any]
    holdout_scores: Callable[[], np.ndarray]
    synthetic: Callable[[Model, FeatureExtractor], list[Damaged]] | None = None


class Method(ABC):
    """One anomaly-detection method: its fit, its stored tensors, its scorer."""

    name: ClassVar[str]
    # The image-score rules its scorer knows; the first is what a default fit stores.
    image_scores: ClassVar[tuple[str, ...]]
    # Whether its patch maps are in the units of its image score, so that a heatmap's
    # colour bar can run up to the threshold.
    map_in_score_units: ClassVar[bool]
    # Settings its model files must hold beyond the shared ones, with their JSON types.
    required_settings: ClassVar[dict[str, type]]
    # Whether it can fit on training images' views (`augment`): only a method that pools
    # patches from every position and image can. One with a model per position (PaDiM)
    # or an image vector and grid per training image (SPADE) has no place for them.
    takes_views: ClassVar[bool] = False

    def image_score_for(self, asked: str) -> str | None:
        """The rule a fit stores when `asked` is asked for, or None if it has no such rule."""
        if asked in self.image_scores:
            return asked
        return self.image_scores[0] if asked == DEFAULT_IMAGE_SCORE else None

    def check_fit(  # noqa: B027 - an optional check: most methods have none
        self, settings: FitConfig, patches: int, auto_threshold: bool
    ) -> None:
        """Raise exit_codes.UsageError for options that would fail only after feature
        extraction, given about how many training patches there will be."""

    @abstractmethod
    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        """Its tensors and settings from the training features."""

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

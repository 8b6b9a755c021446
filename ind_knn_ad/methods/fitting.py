"""The fitting side every method has: it fits on the patch features every method shares
(`extractor.TrainFeatures`) and hands back its tensors and settings.

Fit code only: scoring never imports this module or a method's fit module
(tests/test_scoring_imports.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ind_knn_ad.calibration.detectability import Damaged
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures
    from ind_knn_ad.model_file.schema import Model

# (stage description, total) -> context yielding a callback that takes "items done".
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None] | None]]


def no_progress(description: str, total: int) -> AbstractContextManager[None]:
    """A ProgressFactory that shows nothing: the default of library calls."""
    return nullcontext()


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


class Fitter(ABC):
    """One method's fit (`methods.fitter(name)`)."""

    # Whether it can fit on training images' views (`augment`): only a method that pools
    # patches from every position and image can. One with a model per position (PaDiM)
    # or an image vector and grid per training image (SPADE) has no place for them.
    takes_views: ClassVar[bool] = False
    # Whether it can fit on a bank chosen while the features streamed (`TrainFeatures.bank`,
    # `patchcore.streamed`): only a method that keeps a coreset of the patches can.
    streams: ClassVar[bool] = False

    def check_fit(  # noqa: B027 - an optional check: most methods have none
        self, settings: FitConfig, patches: int, auto_threshold: bool
    ) -> None:
        """Raise errors.ConfigError for settings that would fail only after feature
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

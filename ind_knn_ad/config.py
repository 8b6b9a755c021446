"""The fit's configuration: one frozen object from the command line to the model file.

Torch-free, so that the commands can build and check it before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ind_knn_ad.features.augment import NONE
from ind_knn_ad.features.borders import DEFAULT_BORDER
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.search.coreset import PROJECTION_DIM


@dataclass(frozen=True)
class FitConfig:
    """What a fit is made of, for every method; everything here ends up in the model file.

    The coreset fraction and projection only matter to methods that keep a coreset, the
    image score to methods that offer a choice of it, and `augment` (a view set of
    `augment.VIEW_SETS`) to methods that take views (`Method.takes_views`).
    """

    backbone: str = "wide_resnet50_2"
    layers: tuple[int, ...] | None = None
    neighbourhood: int = 3
    border: str = DEFAULT_BORDER
    coreset_fraction: float | None = None  # None: coreset_size's default rule
    projection_dim: int = PROJECTION_DIM
    image_score: str = "max"
    preprocess: Preprocess = field(default_factory=Preprocess)
    seed: int = 0
    augment: str = NONE

    def resolved_layers(self) -> tuple[int, ...]:
        from ind_knn_ad.features.backbones import backbone_spec  # torch: the fit's alone

        return tuple(self.layers or backbone_spec(self.backbone).layers)

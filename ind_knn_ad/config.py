"""The fit's configuration: one frozen object from the command line to the model file,
and the one home of every fit default.

Torch-free, so that the commands can build and check it before anything heavy loads. Each
field is named as its flag is (`coreset` is --coreset; `preprocess` holds --image-size as
`resize`, --crop and the --align box); the model file keeps its own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ind_knn_ad.features.augment import NONE
from ind_knn_ad.features.borders import DEFAULT_BORDER
from ind_knn_ad.features.registry import DEFAULT_BACKBONE, default_layers
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.search.coreset import PROJECTION_DIM

# Images per batch at the default input (224 px); `io.batches.images_per_batch` scales it
# down for larger inputs. Not a setting of the model: it changes no result.
BATCH_IMAGES = 16


@dataclass(frozen=True)
class FitConfig:
    """What a fit is made of, for every method; everything here ends up in the model file.

    The coreset fraction and projection only matter to methods that keep a coreset, the
    image score to methods that offer a choice of it, and `augment` (a view set of
    `augment.VIEW_SETS`) to methods that take views (`Method.takes_views`).
    """

    method: str = "patchcore"
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[int, ...] | None = None  # None: the backbone's default stages
    neighbourhood: int = 3
    border: str = DEFAULT_BORDER
    coreset: float | None = None  # a fraction of the patches; None: coreset_size's rule
    projection_dim: int = PROJECTION_DIM
    image_score: str | None = None  # None: the method's own first rule
    preprocess: Preprocess = field(default_factory=Preprocess)
    seed: int = 0
    augment: str = NONE

    def resolved_layers(self) -> tuple[int, ...]:
        """The backbone stages this fit uses: the given ones, or the backbone's default."""
        return tuple(self.layers or default_layers(self.backbone))

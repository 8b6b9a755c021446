"""Border rules of the neighbourhood average (see `features.PatchFeatures`), without torch,
so the command line and the model-file readers can name them cheaply.

- `zeros`: zero padding, counted in the mean (torch's `avg_pool2d` default, and what the
  reference PatchCore implementations do): edge patches are damped towards zero.
- `exclude`: the mean of the positions inside the map only, so a corner patch averages 4
  positions instead of 9 and varies more.
- `reflect`: the map mirrored at its edge, then the full mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BORDERS = ("zeros", "exclude", "reflect")
# Chosen by measurement on the four shared MVTec AD sets (docs/benchmarks.md): against
# `exclude`, screw_512 0.694 -> 0.777 image ROC AUC, transistor_reduced pixel ROC AUC
# 0.908 -> 0.938, and nothing that was at 1.000 drops.
DEFAULT_BORDER = "zeros"
# Model files written before the rule was recorded were fitted with this one.
UNRECORDED_BORDER = "exclude"


def fitted_border(settings: Mapping[str, Any]) -> str:
    """The border rule a model's settings say it was fitted with."""
    return str(settings.get("border", UNRECORDED_BORDER))

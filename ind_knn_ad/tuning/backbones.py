"""The backbones the automatic settings try, torch-free: make_model.py checks a fit's
options and memory against the first of them before torch loads (`cli.preflight`)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from ind_knn_ad.config import FitConfig

OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")  # Lite1: see docs/benchmarks.md


def searched_backbones(config: FitConfig, given: AbstractSet[str]) -> list[str]:
    """The backbones the choice validates, in order: the given one, else the offline ones
    (no download at fit time)."""
    return [config.backbone] if "backbone" in given else list(OFFLINE_BACKBONES)

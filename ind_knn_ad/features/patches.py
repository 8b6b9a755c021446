"""Patch features: a backbone's mid-level maps made locally aware and stacked per position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from ind_knn_ad.features.borders import BORDERS, DEFAULT_BORDER


def drop_unused_blocks(backbone: nn.Module) -> nn.Module:
    """Cut the blocks after the last stage used; the outputs are the same.

    timm's EfficientNet feature wrapper runs every block even when the chosen stages end
    earlier (about a third of the work for efficientnet_lite0 at stages 2 and 3); its
    other wrappers already stop at the last stage.
    """
    if isinstance(backbone, EfficientNetFeatures) and backbone.feature_hooks is None:
        # Keys are stage numbers; block i produces stage i + 1.
        backbone.blocks = backbone.blocks[: max(backbone._stage_out_idx)]
    return backbone


class PatchFeatures(nn.Module):
    """Backbone stages -> local average -> upsample to the largest map -> concatenate.

    The local average (PatchCore's neighbourhood aggregation) lets each position see a
    little context, so a patch is judged with its surroundings. Upsampling to the finest
    stage keeps the anomaly map as sharp as the backbone allows.
    """

    def __init__(
        self, backbone: nn.Module, neighbourhood: int = 3, border: str = DEFAULT_BORDER
    ) -> None:
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd number, not {neighbourhood}")
        if border not in BORDERS:
            raise ValueError(f"border must be one of {', '.join(BORDERS)}, not {border!r}")
        self.backbone = drop_unused_blocks(backbone)
        self.neighbourhood = neighbourhood
        self.border = border
        self.eval()  # frozen feature extractor: batch norm must use its running statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images to (B, C, h, w) patch features."""
        maps = self.backbone(images)
        size = maps[0].shape[-2:]
        pooled = []
        for feature_map in maps:
            feature_map = self.local_average(feature_map)
            if feature_map.shape[-2:] != size:
                feature_map = F.interpolate(
                    feature_map, size=size, mode="bilinear", align_corners=False
                )
            pooled.append(feature_map)
        return torch.cat(pooled, dim=1)

    def local_average(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The mean over each position's neighbourhood, edges treated by `border`."""
        size, pad = self.neighbourhood, self.neighbourhood // 2
        if pad == 0:
            return feature_map
        if self.border == "reflect":
            padded = F.pad(feature_map, (pad, pad, pad, pad), mode="reflect")
            return F.avg_pool2d(padded, size, stride=1)
        return F.avg_pool2d(
            feature_map,
            size,
            stride=1,
            padding=pad,
            count_include_pad=self.border == "zeros",
        )

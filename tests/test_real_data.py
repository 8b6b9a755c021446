"""Accuracy on real MVTec AD images from ../shared/data/mvtec, with the offline backbone.

The bars are set just under what we measured (see bench/accuracy.py and the README), so a
regression in features, coreset, scoring or threshold shows up here.
"""

from __future__ import annotations

import pytest
from conftest import mvtec_folder

from ind_knn_ad.config import FitConfig
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.train import train

pytestmark = pytest.mark.slow

OFFLINE = FitConfig(backbone="efficientnet_lite0")


def test_hazelnut_reduced() -> None:
    """Measured: image ROC AUC 1.000, pixel ROC AUC 0.983 (2 good + 8 defective)."""
    dataset = load_dataset(mvtec_folder("hazelnut_reduced"))
    evaluation = train(OFFLINE, dataset, device="cpu").evaluation
    assert evaluation.image_rocauc >= 0.99
    assert evaluation.pixel_rocauc >= 0.95
    (_, fp), _ = evaluation.confusion_matrix
    assert fp == 0  # the good-images-only threshold passes both good test images


def test_bottle_256() -> None:
    """Measured: image ROC AUC 1.000; 1 of 83 misclassified at the automatic threshold."""
    dataset = load_dataset(mvtec_folder("bottle_256"))
    evaluation = train(OFFLINE, dataset, device="cpu").evaluation
    assert evaluation.image_rocauc >= 0.99
    (tn, fp), (fn, tp) = evaluation.confusion_matrix
    assert fp + fn <= 0.03 * (tn + fp + fn + tp)

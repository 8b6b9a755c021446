"""SPADE (Cohen and Hoshen 2020): kNN on pooled image vectors, then a pixel-level kNN among
the patches of the nearest training images.

NumPy only. The image vector is the global average of the image's patch features (the
same features PatchCore and PaDiM use), not a deeper layer's pooled output: one feature
graph serves every method, and the pooling is done here. Stored: `train_patches` (N, P, C)
float32 and `image_vectors` (N, C) float32. The fit is in `fit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import Method, PatchScores, Scorer, features_only
from ind_knn_ad.model_file.schema import Model, TensorSpec, feature_positions, positive_int
from ind_knn_ad.search.nearest import exact_squared, nearest_neighbours


def image_vectors(patches: np.ndarray) -> np.ndarray:
    """(N, P, C) patch features to (N, C) image vectors: the mean over positions."""
    return patches.mean(axis=1, dtype=np.float64).astype(np.float32)


def vector_distances(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(Q, N) Euclidean distances, exact in float64: there are few enough vectors."""
    return np.sqrt(exact_squared(queries[:, None, :], vectors[None, :, :]))


class SpadeScorer:
    """(B, C, h, w) features to SPADE's results.

    The image score is the mean distance from the image vector to its K nearest training
    vectors (the paper's image score); the map holds each patch's distance to the nearest
    patch, at any position, of those K training images (the paper's pixel score with
    kappa = 1). With `maps=False` that pixel-level search, most of the work, is skipped and
    the results carry no map.
    """

    def __init__(
        self, train_patches: np.ndarray, vectors: np.ndarray, neighbours: int, maps: bool = True
    ) -> None:
        self.train_patches = train_patches
        self.vectors = vectors
        self.neighbours = neighbours
        self.maps = maps

    def __call__(self, features: np.ndarray) -> list[PatchScores]:
        batch, channels, height, width = features.shape
        if height * width != self.train_patches.shape[1]:
            raise ModelFileError(
                f"the model's feature graph gives a {height}x{width} grid, but its training "
                f"patches cover {self.train_patches.shape[1]} positions"
            )
        rows = np.ascontiguousarray(features.transpose(0, 2, 3, 1)).reshape(batch, -1, channels)
        distances = vector_distances(image_vectors(rows), self.vectors)
        results = []
        for image, to_train in zip(rows, distances, strict=True):
            nearest = np.argsort(to_train, kind="stable")[: self.neighbours]
            score = float(to_train[nearest].mean())  # nearest first, as holdout_scores sums
            if not self.maps:
                results.append(PatchScores(score, None))
                continue
            gallery = self.train_patches[np.sort(nearest)].reshape(-1, channels)
            patch_distances, _ = nearest_neighbours(image, gallery)
            results.append(PatchScores(score, patch_distances.reshape(height, width)))
        return results


class Spade(Method):
    name = "spade"
    image_scores = ("knn_mean",)
    map_in_score_units = False  # the image score is an image-level distance
    required_settings = {"feature_grid": list, "spade": dict}  # noqa: RUF012 - read only
    fit_module = "ind_knn_ad.methods.spade.fit"

    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]:
        channels, images = settings["feature_dim"], settings["train_images"]
        positions = feature_positions(settings, source)
        neighbours = settings["spade"].get("neighbours")
        if not positive_int(neighbours) or neighbours >= images:
            raise ModelFileError(
                f"{source}: SPADE neighbours {neighbours!r} is not in 1..{images - 1}"
            )
        return {
            "train_patches": TensorSpec(np.float32, (images, positions, channels)),
            "image_vectors": TensorSpec(np.float32, (images, channels)),
        }

    def scorer(self, model: Model, preprocess: Preprocess, maps: bool) -> Scorer:
        """Every patch of the input counts, aligned or not."""
        tensors, neighbours = model.tensors, model.settings["spade"]["neighbours"]
        return features_only(
            SpadeScorer(tensors["train_patches"], tensors["image_vectors"], neighbours, maps)
        )

    def summary(self, model: Model) -> str:
        settings = model.settings
        return f"{settings['train_images']} training images, K = {settings['spade']['neighbours']}"

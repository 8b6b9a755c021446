"""PaDiM (Defard et al. 2020): one Gaussian per patch position, scored by Mahalanobis distance.

NumPy only: scoring runs on the ONNX graph's features like PatchCore's. Features are reduced
to a seeded random subset of channels (as in the paper), which keeps each covariance small
(d x d) and the model file at P * d * d floats. Stored: `channels` (d,) int64, `mean`
(P, d) float32 and `inverse_covariance` (P, d, d) float32. The fit is in `fit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import Method, PatchScores, Scorer, features_only
from ind_knn_ad.model_file.schema import Model, TensorSpec, feature_positions, positive_int
from ind_knn_ad.search.nearest import UNIT_ROUNDOFF
from ind_knn_ad.threads import one_blas_thread


class PadimScorer:
    """(B, C, h, w) features to each image's Mahalanobis map; the image score is the map's
    maximum (unblurred, so that scoring needs no SciPy and matches the threshold's rule).

    The map comes from float32 BLAS products, whose rounding depends on the kernel. The
    score does not: the positions that can hold the maximum, given a bound on that
    rounding, are computed again in float64 in a fixed order, and the largest is the score.
    """

    def __init__(self, channels: np.ndarray, mean: np.ndarray, inverse: np.ndarray) -> None:
        self.channels = channels
        self.mean = mean
        self.inverse = inverse
        # |c^T A c| <= |c|^2 * ||abs(A)||_2 <= |c|^2 * max(row sums, column sums) of abs(A).
        magnitude = np.abs(inverse)
        self.spread = np.maximum(
            magnitude.sum(axis=1, dtype=np.float64).max(axis=1),
            magnitude.sum(axis=2, dtype=np.float64).max(axis=1),
        )

    def __call__(self, features: np.ndarray) -> list[PatchScores]:
        batch, _, height, width = features.shape
        if height * width != len(self.mean):
            raise ModelFileError(
                f"the model's feature graph gives a {height}x{width} grid, but its Gaussians "
                f"cover {len(self.mean)} positions"
            )
        rows = features[:, self.channels].reshape(batch, len(self.channels), -1)
        # Two float32 sums of d terms and the rounding of x - mean, with a factor 2 to spare.
        rounding = 4.0 * (len(self.channels) + 2) * UNIT_ROUNDOFF
        results = []
        with one_blas_thread():  # small products: as in the fit
            for image in rows:  # one image at a time, so a score never depends on its batch
                centred = image.T.astype(np.float32) - self.mean  # (P, d)
                product = np.matmul(centred[:, None, :], self.inverse)[:, 0]
                squared = np.einsum("pd,pd->p", product, centred).astype(np.float64)
                error = rounding * np.einsum("pd,pd->p", centred, centred) * self.spread
                candidates = np.flatnonzero(squared + error >= (squared - error).max())
                exact = self._exact_squared(image.T[candidates], candidates)
                squared[candidates] = exact
                distances = np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
                score = float(np.sqrt(max(exact.max(), 0.0)))
                results.append(PatchScores(score, distances.reshape(height, width)))
        return results

    def _exact_squared(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Mahalanobis distances squared of (n, d) rows at `positions`, in float64 with a
        fixed order of operations (elementwise products, sums along the last axis)."""
        centred = rows.astype(np.float64) - self.mean[positions].astype(np.float64)
        inverse = self.inverse[positions].astype(np.float64)
        return ((inverse * centred[:, None, :]).sum(axis=-1) * centred).sum(axis=-1)


class Padim(Method):
    name = "padim"
    image_scores = ("max",)
    map_in_score_units = True  # the image score is the map's maximum
    required_settings = {"feature_grid": list, "padim": dict}  # noqa: RUF012 - read only
    fit_module = "ind_knn_ad.methods.padim.fit"

    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]:
        channels, positions = settings["feature_dim"], feature_positions(settings, source)
        count = settings["padim"].get("channels")
        if not positive_int(count) or count > channels:
            raise ModelFileError(f"{source}: PaDiM channel count {count!r} is not in 1..{channels}")
        return {
            "channels": TensorSpec(np.int64, (count,)),
            "mean": TensorSpec(np.float32, (positions, count)),
            "inverse_covariance": TensorSpec(np.float32, (positions, count, count)),
        }

    def check_tensors(
        self, settings: dict[str, Any], tensors: dict[str, np.ndarray], source: str
    ) -> None:
        """The channels index the features: in range and each once."""
        channels = tensors["channels"]
        if channels.min() < 0 or channels.max() >= settings["feature_dim"]:
            raise ModelFileError(
                f"{source}: PaDiM channels outside 0..{settings['feature_dim'] - 1}"
            )
        if len(np.unique(channels)) != len(channels):
            raise ModelFileError(f"{source}: PaDiM channels repeat")

    def scorer(self, model: Model, preprocess: Preprocess, maps: bool) -> Scorer:
        """Every patch of the input counts, aligned or not."""
        tensors = model.tensors
        return features_only(
            PadimScorer(tensors["channels"], tensors["mean"], tensors["inverse_covariance"])
        )

    def summary(self, model: Model) -> str:
        settings = model.settings
        channels, grid = settings["padim"]["channels"], settings["feature_grid"]
        return (
            f"Gaussians at {grid[0]}x{grid[1]} positions over {channels} of "
            f"{settings['feature_dim']} channels"
        )

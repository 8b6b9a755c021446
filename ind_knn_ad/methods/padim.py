"""PaDiM (Defard et al. 2020): one Gaussian per patch position, scored by Mahalanobis distance.

NumPy only: fitting needs nothing from torch once the features are extracted, and scoring
runs on the ONNX graph's features like PatchCore's. Features are reduced to a seeded random
subset of channels (as in the paper), which keeps each covariance small (d x d) and the
model file at P * d * d floats. Stored: `channels` (d,) int64, `mean` (P, d) float32 and
`inverse_covariance` (P, d, d) float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import (
    Fitted,
    Method,
    ProgressFactory,
    Scorer,
    TensorSpec,
    features_only,
)
from ind_knn_ad.model_file.store import Model, feature_positions, positive_int
from ind_knn_ad.search.nearest import UNIT_ROUNDOFF, PatchScores
from ind_knn_ad.threads import one_blas_thread

if TYPE_CHECKING:
    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.features.extractor import TrainFeatures

CHANNELS = 100  # the paper's choice for ResNet-18; at most the backbone's channel count
REGULARISATION = 0.01  # added to each covariance's diagonal, as in the paper
# Patch positions fitted at once: the float64 working set is N x POSITION_BLOCK x d.
POSITION_BLOCK = 32
# The closed-form held-out distance divides by 1 - c q, which is positive in exact
# arithmetic; this keeps rounding from turning it into a division by zero.
_TINY = 1e-12


def choose_channels(total: int, count: int, seed: int) -> np.ndarray:
    """A seeded random subset of `count` of the `total` channels, in increasing order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False)).astype(np.int64)


@dataclass(frozen=True)
class Gaussians:
    """The fitted model, plus each training image's held-out score for the threshold."""

    channels: np.ndarray  # (d,) int64
    mean: np.ndarray  # (P, d) float32
    inverse_covariance: np.ndarray  # (P, d, d) float32
    holdout_scores: np.ndarray  # (N,) float64


def fit_gaussians(
    features: np.ndarray,
    channels: np.ndarray,
    regularisation: float = REGULARISATION,
    progress: Callable[[int], None] | None = None,
) -> Gaussians:
    """Mean and regularised inverse covariance at each position of (N, P, C) features.

    Also scores every training image against the Gaussians fitted without it
    (leave-one-image-out, the rule PatchCore's threshold uses), in closed form rather than
    by N refits. With u = x_i - mean and S the scatter matrix, removing image i leaves
    covariance S / (N - 2) - c u u^T + eps I, c = N / ((N - 1)(N - 2)), and moves the mean
    so that x_i - mean' = N / (N - 1) u. By Sherman-Morrison its squared distance is
    (N / (N - 1))^2 q / (1 - c q), with q = u^T (S / (N - 2) + eps I)^-1 u.
    """
    images, positions, _ = features.shape
    if images < 3:
        raise ValueError(f"PaDiM needs at least 3 training images, not {images}")
    count = len(channels)
    eye = regularisation * np.eye(count)
    mean = np.empty((positions, count), dtype=np.float32)
    inverse = np.empty((positions, count, count), dtype=np.float32)
    held_out = np.zeros(images, dtype=np.float64)
    shrink = images / ((images - 1) * (images - 2))
    # Single-threaded BLAS: the matrices are small, and on a busy machine the hand-offs
    # between BLAS threads made this fit 30 times slower (27 s instead of 0.9 s for 209
    # images of 784 positions).
    with one_blas_thread():
        for start in range(0, positions, POSITION_BLOCK):
            block = slice(start, min(start + POSITION_BLOCK, positions))
            # (b, N, d): one matrix of training rows per position, contiguous so that the
            # products below go to BLAS (strided stacks take NumPy's slow loop).
            rows = features[:, block][:, :, channels].astype(np.float64).transpose(1, 0, 2)
            centre = rows.mean(axis=1)
            centred = np.ascontiguousarray(rows - centre[:, None, :])
            scatter = np.ascontiguousarray(centred.transpose(0, 2, 1)) @ centred
            mean[block] = centre
            inverse[block] = np.linalg.inv(scatter / (images - 1) + eye)
            without = np.linalg.inv(scatter / (images - 2) + eye)
            q = np.einsum("bnd,bnd->bn", centred @ without, centred)
            squared = (images / (images - 1)) ** 2 * q / np.maximum(1.0 - shrink * q, _TINY)
            held_out = np.maximum(held_out, np.sqrt(squared).max(axis=0))
            if progress is not None:
                progress(block.stop)
    return Gaussians(channels, mean, inverse, held_out)


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

    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        """Gaussians over a seeded channel subset; the held-out scores come with them."""
        _images, positions, channels = train.features.shape
        chosen = choose_channels(channels, CHANNELS, settings.seed)
        with progress("Gaussian fit", positions) as callback:
            gaussians = fit_gaussians(train.features, chosen, progress=callback)
        tensors = {
            "channels": gaussians.channels,
            "mean": gaussians.mean,
            "inverse_covariance": gaussians.inverse_covariance,
        }
        own = {"channels": len(chosen), "seed": settings.seed, "regularisation": REGULARISATION}
        return Fitted(tensors, {self.name: own}, lambda: gaussians.holdout_scores)

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

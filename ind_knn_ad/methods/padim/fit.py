"""PaDiM's fit: a Gaussian per patch position over a seeded random subset of channels, and
each training image's held-out score in closed form. NumPy only: it needs nothing from
torch once the features are extracted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ind_knn_ad.calibration.threshold import distinct_scores
from ind_knn_ad.errors import DatasetError
from ind_knn_ad.methods.fitting import Fitted, Fitter, ProgressFactory
from ind_knn_ad.methods.padim import Padim
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
        raise DatasetError(f"PaDiM needs at least 3 training images, not {images}")
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


class PadimFitter(Fitter):
    def fit(
        self,
        train: TrainFeatures,
        settings: FitConfig,
        image_score: str,
        progress: ProgressFactory,
    ) -> Fitted:
        """Gaussians over a seeded channel subset; the held-out scores come with them,
        refused when the images are alike (rounding against the distance of a mean from
        zero, which the regularisation alone would give)."""
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
        lengths = np.linalg.norm(gaussians.mean, axis=1)
        scale = float(np.median(lengths)) / np.sqrt(REGULARISATION)
        held_out = gaussians.holdout_scores
        return Fitted(tensors, {Padim.name: own}, lambda: distinct_scores(held_out, scale))


FITTER = PadimFitter()

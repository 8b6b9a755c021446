"""PatchCore's training features streamed: extracted a chunk at a time and never all held,
the bank chosen on the way (`search.streamed`), so that a fit on thousands of photos peaks
at about the same memory as one on hundreds (`patchcore.memory`; bench/stream_fit.py).

What later steps read of the features is kept: every image's part regions (a byte a
patch), and the images that held-out scoring reads (`held_out.filler_images`, every row;
`held_out.scored_images`, their own patches), so the automatic threshold and the
synthetic defects work on the streamed bank as on one chosen in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.augment import views_of
from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures, feature_chunks
from ind_knn_ad.methods.fitting import ProgressFactory
from ind_knn_ad.methods.patchcore.held_out import SampledFeatures, filler_images, scored_images
from ind_knn_ad.search.coreset import coreset_size
from ind_knn_ad.search.streamed import StreamedCoreset


class _Chunks:
    """Batches gathered into chunks of `images` images, each handed whole to the coreset."""

    def __init__(self, coreset: StreamedCoreset, images: int, shape: tuple[int, int]) -> None:
        self.coreset = coreset
        self.buffer = np.empty((images, *shape), dtype=np.float32)
        self.filled = 0

    def add(self, features: np.ndarray) -> None:
        while len(features):
            take = min(len(features), len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = features[:take]
            self.filled += take
            features = features[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.filled:
            self.coreset.add(self.buffer[: self.filled].reshape(-1, self.buffer.shape[2]))
            self.filled = 0


def streamed_features(
    extractor: FeatureExtractor,
    paths: list[Path],
    config: FitConfig,
    chunk_images: int,
    batch_size: int,
    progress: ProgressFactory,
) -> TrainFeatures:
    """The training features of `paths` as a streamed fit keeps them, with the bank that
    `config`'s coreset rule chooses among all of them (`TrainFeatures.bank`)."""
    count = len(paths)
    fillers = set(filler_images(count, config.seed).tolist())
    scored = set(scored_images(count, config.seed).tolist())
    per_image = 1 + len(views_of(config.augment))
    held: dict[int, np.ndarray] = {}
    regions: np.ndarray | None = None
    chunks: _Chunks | None = None
    shape = (0, 0, 0)
    grid = (0, 0)
    preprocess = config.preprocess
    with progress("Feature extraction", count) as callback:
        batches = feature_chunks(extractor, paths, preprocess, batch_size, callback, config.augment)
        for batch in batches:
            if chunks is None:
                grid, (_, rows, channels) = batch.grid, batch.features.shape
                shape = (count, rows, channels)
                size = coreset_size(count * rows, config.coreset, rows)
                coreset = StreamedCoreset(count * rows, size, config.projection_dim, config.seed)
                chunks = _Chunks(coreset, min(chunk_images, count), (rows, channels))
                if batch.regions is not None:
                    regions = np.empty((count, batch.regions.shape[1]), dtype=bool)
            for offset, rows_of_image in enumerate(batch.features):
                image = batch.first + offset
                if image in fillers:
                    held[image] = rows_of_image.copy()
                elif image in scored:
                    held[image] = rows_of_image[: grid[0] * grid[1]].copy()
            if regions is not None and batch.regions is not None:
                regions[batch.first : batch.first + len(batch.regions)] = batch.regions
            chunks.add(batch.features)
    assert chunks is not None  # feature_chunks raised for no paths
    chunks.flush()
    with progress("Coreset selection", chunks.coreset.size) as callback:
        bank, indices = chunks.coreset.finish(callback)
    sources = indices // shape[1]
    features = SampledFeatures(shape, held)
    return TrainFeatures(features, grid, regions, paths, per_image, bank=(bank, sources))

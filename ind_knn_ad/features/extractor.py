"""Patch features of training images (torch): the fit's feature network and what it gives.

Every method fits on these features; scoring runs the same network exported to ONNX
(`runtime`), so nothing here is on the scoring path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ind_knn_ad.config import FitConfig
from ind_knn_ad.errors import DatasetError, ImageError
from ind_knn_ad.features.augment import NONE, views_of, with_views
from ind_knn_ad.features.backbones import build_backbone
from ind_knn_ad.features.export import onnx_graph
from ind_knn_ad.features.patches import PatchFeatures
from ind_knn_ad.io.alignment import part_regions
from ind_knn_ad.io.batches import preprocessed_batches, stack
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.threads import cpu_count

Progress = Callable[[int], None]


class FeatureExtractor:
    """The torch patch-feature network on a device, taking and giving NumPy arrays."""

    def __init__(
        self, settings: FitConfig, device: torch.device, weights: Path | None = None
    ) -> None:
        backbone = build_backbone(settings.backbone, settings.resolved_layers(), weights)
        # Channels-last runs the convolutions (depthwise ones above all) a third faster on
        # the CPU, with the same results up to float rounding.
        self.network = PatchFeatures(backbone, settings.neighbourhood, settings.border).to(
            device, memory_format=torch.channels_last
        )
        self.device = device
        self.workers = cpu_count() if device.type == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 to (B, C, h, w) float32 patch features.

        On the CPU the batch is split between one thread per core, each running torch on a
        single thread. Torch's own threads wait for each other inside every layer, and on a
        machine where another process holds a core that costs up to three times the work;
        whole sub-batches per thread need no such waits.

        The array is a (B, C, h, w) view of channels-last memory, so the (B, h, w, C) patch
        rows that scoring wants come without a copy.
        """
        parts = min(self.workers, len(images))
        if parts <= 1:
            return self._run(images)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="features")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            outputs = list(self._pool.map(self._run, np.array_split(images, parts)))
        finally:
            torch.set_num_threads(threads)
        rows = np.concatenate([output.transpose(0, 2, 3, 1) for output in outputs])
        return rows.transpose(0, 3, 1, 2)

    def _run(self, images: np.ndarray) -> np.ndarray:
        # cuDNN may run float32 convolutions in TF32, which moved features by 4e-3 of their
        # range on an H200; scoring runs in float32 (ONNX Runtime), so fitting must too
        # (2e-6 without TF32). The flags are process-wide: CPU runs, which come from
        # several threads at once, leave them alone.
        if self.device.type == "cuda":
            precision = torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        else:
            precision = nullcontext()
        with torch.inference_mode(), precision:
            batch = torch.from_numpy(images).to(self.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            return self.network(batch).float().cpu().numpy()

    def export_onnx(self, size: tuple[int, int]) -> bytes:
        """The network as an ONNX graph for inputs of (width, height), with a dynamic batch
        axis, for torch-free scoring (`features.export`)."""
        graph = onnx_graph(self.network.to("cpu"), size)
        self.network.to(self.device)
        return graph


@dataclass
class TrainFeatures:
    """Patch features of every training image, (images, views*h*w, C), the grid shape,
    and for aligned parts the patches each image is scored on, (images, h*w) bool.

    An image's first h*w rows are its own patches, then come those of each of its views
    (`augment`), so that a patch's image is its row's index over `views*h*w`; without
    augmentation `views` is 1.

    A streamed fit (`methods.patchcore.streamed`) never holds every image's features:
    there `features` answers for the images that held-out scoring reads alone, and `bank`
    holds the rows chosen while streaming and the training image of each.
    """

    features: np.ndarray
    grid: tuple[int, int]
    regions: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)
    views: int = 1
    bank: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class FeatureChunk:
    """Consecutive training images' patch features, (images, views*h*w, C), from image
    `first` on, with their (images, h*w) part regions where aligned."""

    first: int
    features: np.ndarray
    grid: tuple[int, int]
    regions: np.ndarray | None


def feature_chunks(
    extractor: FeatureExtractor,
    paths: list[Path],
    preprocess: Preprocess,
    batch_size: int = 16,
    progress: Progress | None = None,
    augment: str = NONE,
) -> Iterator[FeatureChunk]:
    """Features of training images, one batch at a time, and of their views under the view
    set `augment`; any unreadable image stops the fit with its error. A batch holds
    `batch_size` network inputs, views included."""
    if not paths:
        raise DatasetError("no training images")
    views = views_of(augment)
    per_image = 1 + len(views)
    done = 0
    for items in preprocessed_batches(paths, preprocess, max(1, batch_size // per_image)):
        for _, value in items:
            if isinstance(value, ImageError):
                raise value
        _, arrays, cuts = stack(items)
        batch = extractor(with_views(arrays, views))
        _, channels, height, width = batch.shape
        count = len(arrays)
        rows = batch.transpose(0, 2, 3, 1).reshape(count, -1, channels)
        regions = None
        if preprocess.align is not None:
            regions = part_regions(cuts, (height, width)).reshape(count, -1)
        yield FeatureChunk(done, rows, (height, width), regions)
        done += count
        if progress is not None:
            progress(done)


def extract_features(
    extractor: FeatureExtractor,
    paths: Iterable[Path],
    preprocess: Preprocess,
    batch_size: int = 16,
    progress: Progress | None = None,
    augment: str = NONE,
) -> TrainFeatures:
    """Every training image's features at once (`feature_chunks`).

    Each batch is written into one array allocated at the first batch, so memory peaks at
    that array (which grows by the view count) plus one batch of backbone maps: not at a
    list of chunks plus their concatenation, and never at every image's full backbone
    maps.
    """
    paths = list(paths)
    features: np.ndarray | None = None
    regions: np.ndarray | None = None
    grid: tuple[int, int] = (0, 0)
    for chunk in feature_chunks(extractor, paths, preprocess, batch_size, progress, augment):
        end = chunk.first + len(chunk.features)
        if features is None:
            grid = chunk.grid
            features = np.empty((len(paths), *chunk.features.shape[1:]), dtype=np.float32)
            if chunk.regions is not None:
                regions = np.empty((len(paths), chunk.regions.shape[1]), dtype=bool)
        features[chunk.first : end] = chunk.features
        if regions is not None and chunk.regions is not None:
            regions[chunk.first : end] = chunk.regions
    assert features is not None  # feature_chunks raised for no paths
    return TrainFeatures(features, grid, regions, paths, 1 + len(views_of(augment)))

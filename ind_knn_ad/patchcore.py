"""PatchCore fitting (torch): patch features of good images -> coreset memory bank -> model.

Scoring lives in `scoring` (NumPy) and runs the same for features computed here and for
features from the exported ONNX graph in `runtime`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from . import __version__, detectability
from .alignment import part_regions
from .backbones import backbone_spec, build_backbone
from .borders import DEFAULT_BORDER
from .coreset import PROJECTION_DIM, coreset_size, greedy_coreset
from .features import PatchFeatures
from .images import ImageError, Preprocess
from .methods import make_scorer
from .model_file import FORMAT, Model, required_version
from .pipeline import cpu_count, preprocessed_batches, stack
from .threshold import AUTO, auto_threshold, holdout_scores

Progress = Callable[[int], None]


def select_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


@dataclass(frozen=True)
class PatchCoreSettings:
    """What a fit is made of; everything here ends up in the model file."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[int, ...] | None = None
    neighbourhood: int = 3
    border: str = DEFAULT_BORDER
    coreset_fraction: float = 0.1
    projection_dim: int = PROJECTION_DIM
    image_score: str = "max"
    preprocess: Preprocess = field(default_factory=Preprocess)
    seed: int = 0

    def resolved_layers(self) -> tuple[int, ...]:
        return tuple(self.layers or backbone_spec(self.backbone).layers)


class FeatureExtractor:
    """The torch patch-feature network on a device, taking and giving NumPy arrays."""

    def __init__(
        self, settings: PatchCoreSettings, device: torch.device, weights: Path | None = None
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
        axis, for torch-free scoring."""
        network = self.network.to("cpu")
        width, height = size
        example = torch.zeros(1, 3, height, width)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                buffer,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        self.network.to(self.device)
        return buffer.getvalue()


@dataclass
class TrainFeatures:
    """Patch features of every training image, (images, h*w, C), the grid shape, and for
    aligned parts the patches each image is scored on, (images, h*w) bool."""

    features: np.ndarray
    grid: tuple[int, int]
    regions: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)


def extract_features(
    extractor: FeatureExtractor,
    paths: Iterable[Path],
    preprocess: Preprocess,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> TrainFeatures:
    """Features of training images; any unreadable image stops the fit with its error.

    Each batch is written into one array allocated at the first batch, so memory peaks at
    that array plus one batch of backbone maps: not at a list of chunks plus their
    concatenation, and never at every image's full backbone maps.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no training images")
    features: np.ndarray | None = None
    regions: np.ndarray | None = None
    grid: tuple[int, int] = (0, 0)
    done = 0
    for items in preprocessed_batches(paths, preprocess, batch_size):
        for _, value in items:
            if isinstance(value, ImageError):
                raise value
        _, arrays = stack(items)
        batch = extractor(arrays)
        count, channels, height, width = batch.shape
        if features is None:
            grid = (height, width)
            features = np.empty((len(paths), height * width, channels), dtype=np.float32)
            if preprocess.align is not None:
                regions = np.empty((len(paths), height * width), dtype=bool)
        features[done : done + count] = batch.transpose(0, 2, 3, 1).reshape(count, -1, channels)
        if regions is not None:
            found = part_regions(arrays, preprocess.mean, preprocess.std, grid)
            regions[done : done + count] = found.reshape(count, -1)
        done += count
        if progress is not None:
            progress(done)
    assert features is not None  # paths is not empty
    return TrainFeatures(features, grid, regions, paths)


def package_versions() -> dict[str, str]:
    """Versions of the packages a model was made with, recorded for provenance."""
    found = {"ind_knn_ad": __version__}
    for package in ("torch", "timm", "onnx", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def fit(
    extractor: FeatureExtractor,
    train: TrainFeatures,
    settings: PatchCoreSettings,
    threshold: float | str = AUTO,
    dataset: str = "custom",
    progress: Progress | None = None,
) -> Model:
    """Coreset memory bank from training features, threshold, and the exported graph."""
    images, patches, channels = train.features.shape
    flat = train.features.reshape(-1, channels)
    size = coreset_size(flat.shape[0], settings.coreset_fraction)
    chosen = greedy_coreset(flat, size, settings.projection_dim, settings.seed, progress)
    bank = np.ascontiguousarray(flat[chosen])
    if threshold == AUTO:
        scores = holdout_scores(
            train.features,
            train.grid,
            bank,
            chosen // patches,
            settings.image_score,
            seed=settings.seed,
            regions=train.regions,
        )
        value, threshold_info = auto_threshold(scores)
    else:
        value, threshold_info = float(threshold), {"rule": "fixed, given by --threshold"}
    model_settings = {
        "format": FORMAT,
        "format_version": required_version(settings.preprocess.to_dict()),
        "method": "patchcore",
        "backbone": settings.backbone,
        "layers": list(settings.resolved_layers()),
        "neighbourhood": settings.neighbourhood,
        "border": settings.border,
        "preprocess": settings.preprocess.to_dict(),
        "feature_dim": int(channels),
        "feature_grid": list(train.grid),
        "image_score": settings.image_score,
        "threshold": {"value": value, **threshold_info},
        "coreset": {
            "fraction": settings.coreset_fraction,
            "size": int(size),
            "total_patches": int(flat.shape[0]),
            "projection_dim": settings.projection_dim,
            "seed": settings.seed,
        },
        "train_images": int(images),
        "dataset": dataset,
        "versions": package_versions(),
    }
    model = Model(model_settings, bank, extractor.export_onnx(settings.preprocess.size))
    # Each damaged image is scored without its own patches: the bank must hold others'.
    if train.paths and len(np.unique(chosen // patches)) > 1:
        model_settings["detectability"] = _detectability(
            model, extractor, train, chosen // patches, settings.preprocess
        )
    return model


def _detectability(
    model: Model,
    extractor: FeatureExtractor,
    train: TrainFeatures,
    sources: np.ndarray,
    preprocess: Preprocess,
) -> list[dict]:
    """Synthetic defects on held-out training images, scored as the threshold's held-out
    images are: against the bank without the image's own patches."""

    def held_out(features: np.ndarray, images: np.ndarray, image: int) -> list[float]:
        bank = np.ascontiguousarray(model.memory_bank[sources != image])
        scorer = make_scorer(replace(model, memory_bank=bank), preprocess, maps=False)
        return [result.score for result in scorer(features, images)]

    threshold, seed = model.threshold, model.settings["coreset"]["seed"]
    return detectability.measure(train.paths, preprocess, extractor, held_out, threshold, seed)

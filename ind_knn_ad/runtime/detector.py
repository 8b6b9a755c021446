"""Torch-free scoring: the model file's ONNX feature graph on ONNX Runtime, then NumPy.

This is what `anomaly_detector.py` runs. Importing it costs a fraction of a second, where
torch and timm would cost about three.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ind_knn_ad.devices import cuda_unavailable, resolve_device
from ind_knn_ad.errors import ImageError, ModelFileError
from ind_knn_ad.io.batches import images_per_batch, preprocessed_batches, stack
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.io.preprocess import Prepared, Preprocess
from ind_knn_ad.methods import make_scorer
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.search.nearest import start_threads
from ind_knn_ad.threads import cap_threads

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime providers for auto, cpu or cuda; cuda without support is an error."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    missing = "ONNX Runtime has no CUDA support here (no GPU, or onnxruntime-gpu is not installed)"
    if resolve_device(device, lambda: PROVIDERS["cuda"] in available, missing) == "cpu":
        return [PROVIDERS["cpu"]]
    return [PROVIDERS["cuda"], PROVIDERS["cpu"]]


class Detector:
    """A loaded model, ready to score many images with one graph session.

    Raises ConfigError (a ValueError) for a device that cannot be had, and ModelFileError
    (whose message does not repeat the file name) for a model whose settings or graph cannot
    be used: load_model checks the file's structure, this checks that its contents run.
    With `maps=False` results may carry no patch maps, which some methods skip for speed.
    `threads` caps the feature graph's threads (default: ONNX Runtime's, one per core) and
    the search's (`threads.cap_threads`, for the whole process), for several scorers
    sharing a machine, each in its own process (`runtime.ray_scoring`).
    """

    def __init__(
        self, model: Model, device: str = "auto", maps: bool = True, threads: int | None = None
    ) -> None:
        import onnxruntime

        providers = onnx_providers(device)
        try:
            self.preprocess = Preprocess.from_dict(model.settings["preprocess"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"bad preprocess settings ({error})") from None
        self.scorer = make_scorer(model, self.preprocess, maps)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        # Idle ONNX Runtime threads would otherwise spin for a while after each run,
        # taking the cores that the nearest-neighbour search needs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            cap_threads(threads)
        try:
            self.session = onnxruntime.InferenceSession(
                model.feature_graph, options, providers=providers
            )
        except Exception as error:  # ONNX Runtime's errors share no base class but Exception
            reason = " ".join(str(error).split())
            raise ModelFileError(f"the model's feature graph cannot run ({reason})") from None
        if device == "cuda" and PROVIDERS["cuda"] not in self.session.get_providers():
            raise cuda_unavailable("the CUDA provider failed to start")
        self.model = model

    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) preprocessed images to (B, C, h, w) patch features."""
        try:
            features = self.session.run(None, {"images": images})[0]
        except Exception as error:  # as above: a graph that loads but does not fit the input
            reason = " ".join(str(error).split())
            raise ModelFileError(f"the model's feature graph failed ({reason})") from None
        channels = self.model.settings["feature_dim"]
        if features.ndim != 4 or features.shape[1] != channels:
            raise ModelFileError(
                f"the model's feature graph gives features of shape {features.shape}, but "
                f"the model was fitted on {channels} channels"
            )
        grid = self.model.settings.get("feature_grid")  # early PatchCore files lack it
        if grid is not None and list(features.shape[2:]) != list(grid):
            raise ModelFileError(
                f"the model's feature graph gives a {features.shape[2]}x{features.shape[3]} "
                f"grid, but the model was fitted on {grid[0]}x{grid[1]}"
            )
        if not np.isfinite(features).all():
            raise ModelFileError("the model's feature graph gives non-finite features")
        return features

    def score_arrays(self, images: np.ndarray, cuts: np.ndarray) -> list[PatchScores]:
        """(B, 3, H, W) network inputs and the (B, H, W, 3) uint8 cuts they were made from
        (aligned PatchCore scores the part found on them) to their results."""
        return self.scorer(self.features(images), cuts)

    @property
    def batch_size(self) -> int:
        """Images per graph run: 8 at 224 px, fewer for larger inputs (1 from 634 px), so
        that memory stays bounded: batches of 8 images at 1024 px peaked at 5 GB."""
        return images_per_batch(self.preprocess.size, 8)

    def score_files(
        self, paths: Iterable[Path | str], batch_size: int | None = None
    ) -> Iterator[tuple[Path | str, PatchScores | ImageError]]:
        """Each path with its result or its error, in input order, decoding in the background.

        A bad image yields its ImageError and the others are still scored; a model that
        fails to run raises ModelFileError, as no image could be scored with it.
        """
        for path, result, _, _ in self.score_files_timed(paths, batch_size):
            yield path, result

    def score_files_timed(
        self, paths: Iterable[Path | str], batch_size: int | None = None
    ) -> Iterator[tuple[Path | str, PatchScores | ImageError, float, np.ndarray | None]]:
        """As score_files, with the seconds each image took and its (H, W, 3) uint8 cut as
        the model saw it (None for a bad image), for heatmaps without decoding it again.

        A batch's time runs from asking for its decoded images to having its scores (the
        wait for decoding, the feature graph, the scorer), and is split equally among its
        scored images; time the caller spends between batches is not counted, so the times
        add up to the scoring alone. A bad image took 0 seconds.
        """
        batch_size = batch_size or self.batch_size
        start_threads()  # before the decoders measure what memory is free
        batches = iter(preprocessed_batches(paths, self.preprocess, batch_size))
        while True:
            start = time.perf_counter()
            items = next(batches, None)
            if items is None:
                return
            positions, arrays, cuts = stack(items)
            results: dict[int, PatchScores] = {}
            if arrays is not None and cuts is not None:
                results = dict(zip(positions, self.score_arrays(arrays, cuts), strict=True))
            share = (time.perf_counter() - start) / max(1, len(results))
            for index, (path, value) in enumerate(items):
                result = results.get(index, value)
                cut = value.cut if isinstance(value, Prepared) else None
                if isinstance(result, PatchScores) and not math.isfinite(result.score):
                    # Never a flag from a score that is not a number.
                    result = ImageError(
                        f"{shown_name(path)}: its score is not a finite number ({result.score})"
                    )
                yield path, result, share if index in results else 0.0, cut

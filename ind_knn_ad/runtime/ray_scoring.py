"""Scoring past one machine on Ray Data: a Dataset of image paths (or of files' bytes)
becomes a Dataset of the `file,score,flag` records the scorer's command prints, byte for
byte (`runtime.records`).

One scorer per worker (an actor of `map_batches`) loads the model once and scores every
batch it is handed with one feature-graph thread per CPU Ray gives it. Ray is an optional
install (`pip install 'ind_knn_ad[ray]'`); nothing on the scoring command's path imports it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ind_knn_ad.errors import ImageError
from ind_knn_ad.model_file.store import load_model, named
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.runtime.records import csv_record, printed_score

# Images per batch handed to a scorer: the feature graph runs 8 at a time at 224 px
# (`Detector.batch_size`), and larger batches spread Ray's per-batch cost.
BATCH_IMAGES = 32


class RecordScorer:
    """A model loaded once, turning batches of {"path"} (or {"path", "bytes"}) into
    {"record", "error"}: a record and "" for an image scored, "" and its one-line error
    for one that could not be."""

    def __init__(
        self, model: str, device: str = "cpu", threshold: float | None = None, threads: int = 1
    ) -> None:
        path = Path(model)
        loaded = load_model(path)
        with named(path):
            self.detector = Detector(loaded, device, maps=False, threads=threads)
        self.model = path
        self.threshold = loaded.threshold if threshold is None else threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        names = [str(name) for name in batch["path"]]
        if "bytes" not in batch:
            return self._records(names, names)
        with tempfile.TemporaryDirectory(prefix="ind_knn_ad_ray_") as folder:
            files = []
            for index, (name, data) in enumerate(zip(names, batch["bytes"], strict=True)):
                file = Path(folder) / f"{index}{Path(name).suffix}"
                file.write_bytes(data)
                files.append(str(file))
            return self._records(files, names)

    def _records(self, files: list[str], names: list[str]) -> dict[str, list[str]]:
        shown = dict(zip(files, names, strict=True))
        records, errors = [], []
        with named(self.model):
            for file, result in self.detector.score_files(files):
                name = shown[str(file)]
                if isinstance(result, ImageError):
                    records.append("")
                    errors.append(str(result).replace(str(file), name))
                    continue
                printed, flag = printed_score(result.score, self.threshold)
                records.append(csv_record([name, printed, flag]))
                errors.append("")
        return {"record": records, "error": errors}


# Ray's Dataset, not imported here: Ray is an extra, and the library's imports must all be
# requirements (tests/test_requirements.py).
RayDataset = Any


def score_dataset(
    dataset: RayDataset,
    model: Path | str,
    *,
    workers: int = 1,
    device: str = "cpu",
    threshold: float | None = None,
    batch_size: int = BATCH_IMAGES,
    **ray_options: Any,
) -> RayDataset:
    """`dataset`'s images (a "path" column, and a "bytes" column where the files' contents
    travel with them, as `ray.data.read_binary_files(..., include_paths=True)` gives) scored
    with the model file `model` by `workers` scorers of one CPU each (`ray_options` go to
    `map_batches`, `num_gpus` for instance). Each scorer holds its CPU for the whole run:
    leave the cluster a CPU more for Ray Data's read tasks, which otherwise wait forever.
    The records keep the input's order where Ray's `preserve_order` execution option is
    set."""
    return dataset.map_batches(
        RecordScorer,
        fn_constructor_kwargs={"model": str(model), "device": device, "threshold": threshold},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        **{"num_cpus": 1, **ray_options},
    )

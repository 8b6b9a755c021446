"""The model file: one safetensors file, versioned, validated on load, written atomically.

Tensors: `memory_bank` (K, C) float32 and `feature_graph`, the patch-feature network as ONNX
bytes (uint8), so scoring needs neither torch nor the backbone's weights. Metadata: one JSON
document under the key `ind_knn_ad`. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "ind_knn_ad.model"
FORMAT_VERSION = 1
METADATA_KEY = "ind_knn_ad"
DEFAULT_MODEL_PATH = Path("models/model.safetensors")

# Required settings and their JSON types; the loader rejects a file missing any of them.
REQUIRED = {
    "format": str,
    "format_version": int,
    "method": str,
    "backbone": str,
    "layers": list,
    "neighbourhood": int,
    "preprocess": dict,
    "feature_dim": int,
    "image_score": str,
    "threshold": dict,
    "coreset": dict,
    "train_images": int,
    "dataset": str,
    "versions": dict,
}


class ModelFileError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass
class Model:
    """Everything scoring needs, plus the provenance recorded at fit time."""

    settings: dict[str, Any]
    memory_bank: np.ndarray
    feature_graph: bytes

    @property
    def threshold(self) -> float:
        return float(self.settings["threshold"]["value"])


def validate_settings(settings: dict[str, Any], source: str = "model") -> None:
    """Raise ModelFileError unless `settings` is a complete, current-format description."""
    if settings.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not an ind_knn_ad model file")
    version = settings.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: model format version {version} is newer than this tool supports "
            f"({FORMAT_VERSION}); upgrade anomaly_detector"
        )
    for key, kind in REQUIRED.items():
        value = settings.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{source}: setting {key!r} is missing or not a {kind.__name__}")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{source}: unsupported model format version {version}")
    threshold = settings["threshold"].get("value")
    if not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ModelFileError(f"{source}: threshold value is missing or not a finite number")


def save_model(model: Model, path: Path) -> None:
    """Validate, serialise and write the model atomically."""
    from safetensors.numpy import save

    validate_settings(model.settings)
    tensors = {
        "memory_bank": np.ascontiguousarray(model.memory_bank, dtype=np.float32),
        "feature_graph": np.frombuffer(model.feature_graph, dtype=np.uint8),
    }
    payload = save(tensors, metadata={METADATA_KEY: json.dumps(model.settings, sort_keys=True)})
    atomic_write(Path(path), payload)


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file beside the target, flushed to disk, then renamed over it.

    Readers see either the old file or the new one, never a torn one; an interrupted or
    failed write leaves the old file in place and no temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def load_model(path: Path) -> Model:
    """Read and validate a model file; any defect becomes one ModelFileError line."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise ModelFileError(f"{path}: model file {what} (make one with make_model.py)")
    try:
        with safe_open(str(path), framework="numpy") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable model file ({error})") from None
    try:
        settings = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not an ind_knn_ad model file (no settings)") from None
    if not isinstance(settings, dict):
        raise ModelFileError(f"{path}: not an ind_knn_ad model file (bad settings)")
    validate_settings(settings, str(path))
    bank = tensors.pop("memory_bank", None)
    graph = tensors.pop("feature_graph", None)
    if bank is None or graph is None:
        raise ModelFileError(f"{path}: model file lacks its memory bank or feature graph")
    if bank.ndim != 2 or bank.shape[1] != settings["feature_dim"] or bank.dtype != np.float32:
        raise ModelFileError(
            f"{path}: memory bank has shape {bank.shape} and type {bank.dtype}, expected "
            f"(K, {settings['feature_dim']}) float32"
        )
    if not np.isfinite(bank).all():
        raise ModelFileError(f"{path}: memory bank holds non-finite values")
    return Model(settings, bank, graph.tobytes())

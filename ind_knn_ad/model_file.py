"""The model file: one safetensors file, versioned, validated on load, written atomically.

Tensors: `memory_bank` (K, C) float32 and `feature_graph`, the patch-feature network as ONNX
bytes (uint8), so scoring needs neither torch nor the backbone's weights. Metadata: one JSON
document under the key `ind_knn_ad`. Nothing is ever unpickled: safetensors is a JSON
header plus raw little-endian arrays, so a crafted file can at worst fail to load.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .images import shown_name

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


def check_writable(path: Path) -> None:
    """Raise OSError now if `path` could not be written later, so that a long fit does not
    end in a failed save. Creates the missing parent folders, as the save would."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    probe = _temporary_beside(path)
    with open(probe, "xb"):
        pass
    os.unlink(probe)


def _temporary_beside(path: Path) -> Path:
    """A fresh hidden name in the target's folder (created if missing), so that the final
    rename stays on one file system and is atomic."""
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "parent is not a folder", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file beside the target, flushed to disk, then renamed over it.

    Readers see either the old file or the new one, never a torn one; a failed write (full
    disk) or an interrupt (Ctrl-C, SIGTERM) leaves the old file in place and no temporary
    file behind. The new file gets the usual permissions (0666 less the umask), so other
    users can read a model as they could any file this user writes.
    """
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable, so a power cut cannot bring the old file back."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_model(path: Path) -> Model:
    """Read and validate a model file; any defect becomes one ModelFileError line."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = shown_name(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ModelFileError(
            f"{name}: model file not found (make one with make_model.py)"
        ) from None
    except OSError as error:
        raise ModelFileError(f"{name}: cannot read model file ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ModelFileError(f"{name}: model file is {what}")
    try:
        with safe_open(str(path), framework="numpy") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{name}: not a readable model file ({error})") from None
    try:
        settings = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (no settings)") from None
    if not isinstance(settings, dict):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (bad settings)")
    validate_settings(settings, name)
    bank = tensors.pop("memory_bank", None)
    graph = tensors.pop("feature_graph", None)
    if bank is None or graph is None:
        raise ModelFileError(f"{name}: model file lacks its memory bank or feature graph")
    if bank.ndim != 2 or bank.shape[1] != settings["feature_dim"] or bank.dtype != np.float32:
        raise ModelFileError(
            f"{name}: memory bank has shape {bank.shape} and type {bank.dtype}, expected "
            f"(K, {settings['feature_dim']}) float32"
        )
    if not np.isfinite(bank).all():
        raise ModelFileError(f"{name}: memory bank holds non-finite values")
    return Model(settings, bank, graph.tobytes())

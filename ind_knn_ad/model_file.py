"""The model file: one safetensors file, versioned, validated on load, written atomically.

Every file holds `feature_graph`, the patch-feature network as ONNX bytes (uint8), so
scoring needs neither torch nor the backbone's weights, and one JSON document of settings
under the metadata key `ind_knn_ad`. The setting `method` decides which other tensors the
file must hold (C channels, P = h*w patch positions, N training images):

- patchcore: `memory_bank` (K, C) float32, the coreset;
- padim: `channels` (d,) int64, `mean` (P, d) float32, `inverse_covariance` (P, d, d) float32;
- spade: `train_patches` (N, P, C) float32, `image_vectors` (N, C) float32.

A PatchCore file is exactly what it was in version 1, and a PaDiM or SPADE file has no
`memory_bank`, so an older tool refuses it rather than misreading it. Version 2 adds
`preprocess.align` (the part alignment box); only files that use it are written as version
2, so that a tool which would ignore it refuses them. Nothing
is ever unpickled: safetensors is a JSON header plus raw little-endian arrays, so a crafted
file can at worst fail to load.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .images import shown_name

FORMAT = "ind_knn_ad.model"
# The newest version this tool reads and writes. Version 2 added `preprocess.align`; a
# file without it is still written as version 1, which older tools read.
FORMAT_VERSION = 2
METADATA_KEY = "ind_knn_ad"
DEFAULT_MODEL_PATH = Path("models/model.safetensors")

METHODS = ("patchcore", "padim", "spade")
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
    "train_images": int,
    "dataset": str,
    "versions": dict,
}
# Further settings each method requires.
METHOD_REQUIRED: dict[str, dict[str, type]] = {
    "patchcore": {"coreset": dict},
    "padim": {"feature_grid": list, "padim": dict},
    "spade": {"feature_grid": list, "spade": dict},
}


class ModelFileError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass
class Model:
    """Everything scoring needs, plus the provenance recorded at fit time.

    `memory_bank` is PatchCore's (None for the other methods); `tensors` holds the other
    methods' arrays by their names in the file.
    """

    settings: dict[str, Any]
    memory_bank: np.ndarray | None
    feature_graph: bytes
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.settings["method"])

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
    _check_types(settings, REQUIRED, source)
    if settings["method"] not in METHODS:
        known = ", ".join(METHODS)
        raise ModelFileError(f"{source}: unknown method {settings['method']!r} (known: {known})")
    _check_types(settings, METHOD_REQUIRED[settings["method"]], source)
    if version not in (1, FORMAT_VERSION):
        raise ModelFileError(f"{source}: unsupported model format version {version}")
    if version < required_version(settings["preprocess"]):
        raise ModelFileError(f"{source}: preprocess 'align' needs model format version 2")
    threshold = settings["threshold"].get("value")
    if not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ModelFileError(f"{source}: threshold value is missing or not a finite number")


def required_version(preprocess: dict[str, Any]) -> int:
    """The lowest format version that holds these preprocess settings: 2 with `align`."""
    return 2 if "align" in preprocess else 1


def _check_types(settings: dict[str, Any], required: dict[str, type], source: str) -> None:
    for key, kind in required.items():
        value = settings.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{source}: setting {key!r} is missing or not a {kind.__name__}")


def _method_tensors(model: Model) -> dict[str, np.ndarray]:
    """The arrays a method stores, by name (PatchCore's bank lives in its own field)."""
    if model.method == "patchcore":
        return {} if model.memory_bank is None else {"memory_bank": model.memory_bank}
    return dict(model.tensors)


def save_model(model: Model, path: Path) -> None:
    """Validate, serialise and write the model atomically; an invalid model writes nothing."""
    from safetensors.numpy import save

    validate_settings(model.settings)
    arrays = _method_tensors(model)
    validate_tensors(model.settings, arrays)
    tensors = {
        **{name: np.ascontiguousarray(array) for name, array in arrays.items()},
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
    graph = tensors.pop("feature_graph", None)
    if graph is None:
        raise ModelFileError(f"{name}: model file lacks its feature graph")
    validate_tensors(settings, tensors, name)
    if settings["method"] == "patchcore":
        return Model(settings, tensors["memory_bank"], graph.tobytes())
    wanted = _tensor_specs(settings, name)
    return Model(settings, None, graph.tobytes(), {key: tensors[key] for key in wanted})


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positions(settings: dict[str, Any], source: str) -> int:
    grid = settings["feature_grid"]
    if len(grid) != 2 or not all(_positive_int(side) for side in grid):
        raise ModelFileError(f"{source}: feature grid {grid!r} is not two positive integers")
    return grid[0] * grid[1]


def _tensor_specs(
    settings: dict[str, Any], source: str
) -> dict[str, tuple[type, tuple[int | None, ...]]]:
    """Each tensor the method needs, with its type and shape (None: any size above 0)."""
    channels, images = settings["feature_dim"], settings["train_images"]
    if settings["method"] == "patchcore":
        return {"memory_bank": (np.float32, (None, channels))}
    positions = _positions(settings, source)
    if settings["method"] == "padim":
        count = settings["padim"].get("channels")
        if not _positive_int(count) or count > channels:
            raise ModelFileError(f"{source}: PaDiM channel count {count!r} is not in 1..{channels}")
        return {
            "channels": (np.int64, (count,)),
            "mean": (np.float32, (positions, count)),
            "inverse_covariance": (np.float32, (positions, count, count)),
        }
    neighbours = settings["spade"].get("neighbours")
    if not _positive_int(neighbours) or neighbours >= images:
        raise ModelFileError(f"{source}: SPADE neighbours {neighbours!r} is not in 1..{images - 1}")
    return {
        "train_patches": (np.float32, (images, positions, channels)),
        "image_vectors": (np.float32, (images, channels)),
    }


def validate_tensors(
    settings: dict[str, Any], tensors: dict[str, np.ndarray], source: str = "model"
) -> None:
    """Raise ModelFileError unless the method's tensors are all there, typed and shaped as
    its (already validated) settings say, and finite: scoring then trusts every shape and
    index without checking again."""
    specs = _tensor_specs(settings, source)
    missing = [key for key in specs if key not in tensors]
    if missing:
        what = "memory bank" if missing == ["memory_bank"] else ", ".join(missing)
        raise ModelFileError(f"{source}: model file lacks its {what}")
    for key, (dtype, sizes) in specs.items():
        array, label = tensors[key], "memory bank" if key == "memory_bank" else key
        if (
            array.dtype != dtype
            or array.ndim != len(sizes)
            or any(
                got != want
                for got, want in zip(array.shape, sizes, strict=True)
                if want is not None
            )
            or array.size == 0
        ):
            expected = ", ".join("K" if size is None else str(size) for size in sizes)
            raise ModelFileError(
                f"{source}: {label} has shape {array.shape} and type {array.dtype}, expected "
                f"({expected}) {np.dtype(dtype)}"
            )
        if dtype is np.float32 and not np.isfinite(array).all():
            raise ModelFileError(f"{source}: {label} holds non-finite values")
    if settings["method"] == "padim":
        channels = tensors["channels"]
        if channels.min() < 0 or channels.max() >= settings["feature_dim"]:
            raise ModelFileError(
                f"{source}: PaDiM channels outside 0..{settings['feature_dim'] - 1}"
            )
        if len(np.unique(channels)) != len(channels):
            raise ModelFileError(f"{source}: PaDiM channels repeat")

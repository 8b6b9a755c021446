"""The model file on disk: one safetensors file, validated on load (`model_file.schema`),
written atomically (`io.atomic`).

Every file holds `feature_graph`, the patch-feature network as ONNX bytes (uint8), so
scoring needs neither torch nor the backbone's weights, and one JSON document of settings
under the metadata key `ind_knn_ad`. Nothing is ever unpickled: safetensors is a JSON
header plus raw little-endian arrays, so a crafted file can at worst fail to load.

Integrity: the settings hold `sha256`, the SHA-256 of every tensor (its name, type and
shape, then its bytes), and the metadata key `ind_knn_ad.sha256` holds the SHA-256 of the
settings text itself, so any flipped bit in the file is refused on load. Both are additive:
the format version is unchanged, older tools read such files as before (unverified), and
files written before the digests existed are still read, unverified. One record without
the other is refused, so a single damaged byte cannot make a file pass for an old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from ind_knn_ad import methods
from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.atomic import atomic_write
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.io.limits import SCORE_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods import Method
from ind_knn_ad.model_file.schema import (
    Model,
    check_format,
    check_types,
    check_values,
    validate_tensors,
)

METADATA_KEY = "ind_knn_ad"
DIGESTS = "sha256"  # settings key: tensor name -> SHA-256 (see tensor_digest)
SETTINGS_DIGEST_KEY = "ind_knn_ad.sha256"  # metadata key: SHA-256 of the settings text
DEFAULT_MODEL_PATH = Path("models/model.safetensors")


def method_of(settings: dict[str, Any], source: str) -> Method:
    """The method of settings whose shared types are checked; ModelFileError if unknown."""
    method = methods.find(settings["method"])
    if method is None:
        known = ", ".join(methods.names())
        raise ModelFileError(f"{source}: unknown method {settings['method']!r} (known: {known})")
    return method


def validate_settings(settings: dict[str, Any], source: str = "model") -> Method:
    """Raise ModelFileError unless `settings` is a complete, current-format description;
    its method otherwise."""
    check_format(settings, source)
    method = method_of(settings, source)
    check_types(settings, method.required_settings, source)
    check_values(settings, source)
    return method


def tensor_digest(name: str, array: np.ndarray) -> str:
    """SHA-256 of a tensor's name, type and shape, then its bytes as stored."""
    digest = hashlib.sha256(f"{name} {array.dtype.str} {list(array.shape)}\n".encode())
    digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def serialise(model: Model) -> bytes:
    """The model file's bytes, with the digests of every tensor and of the settings."""
    settings = {key: value for key, value in model.settings.items() if key != DIGESTS}
    method = validate_settings(settings)
    arrays = dict(model.tensors)
    validate_tensors(settings, arrays, method)
    tensors = {
        **{name: np.ascontiguousarray(array) for name, array in arrays.items()},
        "feature_graph": np.frombuffer(model.feature_graph, dtype=np.uint8),
    }
    settings[DIGESTS] = {name: tensor_digest(name, array) for name, array in tensors.items()}
    text = json.dumps(settings, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return save(tensors, metadata={METADATA_KEY: text, SETTINGS_DIGEST_KEY: digest})


def save_model(model: Model, path: Path) -> None:
    """Validate, serialise and write the model atomically; an invalid model writes nothing."""
    atomic_write(Path(path), serialise(model))


@contextlib.contextmanager
def named(path: Path) -> Iterator[None]:
    """A ModelFileError raised inside names the model file, as load_model's own do: the
    scorer's (`runtime.Detector`) leave the name to their caller."""
    try:
        yield
    except ModelFileError as error:
        raise ModelFileError(f"{shown_name(path)}: {error}") from None


def load_model(path: Path) -> Model:
    """Read and validate a model file; any defect becomes one ModelFileError line."""
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
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (no settings)")
    declared = metadata.get(SETTINGS_DIGEST_KEY)
    if declared is not None and hashlib.sha256(text.encode()).hexdigest() != declared:
        raise ModelFileError(f"{name}: model file is damaged (its settings fail their SHA-256)")
    try:
        settings = json.loads(text)
    except (json.JSONDecodeError, RecursionError, MemoryError):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (bad settings)") from None
    if not isinstance(settings, dict):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (bad settings)")
    digests = settings.pop(DIGESTS, None)
    if (digests is None) != (declared is None):
        raise ModelFileError(f"{name}: model file is damaged (its SHA-256 record is incomplete)")
    if digests is not None:
        _verify_digests(digests, tensors, name)
    method = validate_settings(settings, name)
    _check_fits_memory(settings, name)
    graph = tensors.pop("feature_graph", None)
    if graph is None:
        raise ModelFileError(f"{name}: model file lacks its feature graph")
    validate_tensors(settings, tensors, method, name)
    wanted = method.tensor_specs(settings, name)
    return Model(settings, graph.tobytes(), {key: tensors[key] for key in wanted})


def _verify_digests(digests: object, tensors: dict[str, np.ndarray], source: str) -> None:
    """Every tensor in the file is one the writer recorded, with the bytes it wrote."""
    if not isinstance(digests, dict) or set(digests) != set(tensors):
        raise ModelFileError(
            f"{source}: model file is damaged (its tensors are not those recorded)"
        )
    for key, array in tensors.items():
        if digests[key] != tensor_digest(key, array):
            label = key.replace("_", " ")
            raise ModelFileError(f"{source}: model file is damaged ({label} fails its SHA-256)")


def _check_fits_memory(settings: dict[str, Any], source: str) -> None:
    """Refuse a model whose input could not be scored in this machine's memory."""
    try:
        width, height = Preprocess.from_dict(settings["preprocess"]).size
    except ValueError as error:  # the align box's own range check
        raise ModelFileError(f"{source}: bad preprocess settings ({error})") from None
    problem = input_too_large(width, height, SCORE_BYTES_PER_PIXEL)
    if problem:
        raise ModelFileError(f"{source}: cannot score with this model here: {problem}")

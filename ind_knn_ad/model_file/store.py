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
import math
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors.numpy import save

from ind_knn_ad import methods
from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.atomic import atomic_write
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.io.limits import SCORE_BYTES_PER_PIXEL, available_memory, input_too_large
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods import Method
from ind_knn_ad.model_file.schema import (
    Model,
    TensorSpec,
    check_format,
    check_shapes,
    check_types,
    check_values,
    validate_tensors,
)

METADATA_KEY = "ind_knn_ad"
DIGESTS = "sha256"  # settings key: tensor name -> SHA-256 (see tensor_digest)
SETTINGS_DIGEST_KEY = "ind_knn_ad.sha256"  # metadata key: SHA-256 of the settings text
DEFAULT_MODEL_PATH = Path("models/model.safetensors")
HEADER_LIMIT = 100_000_000  # safetensors' own bound on the JSON header, in bytes
# The types a safetensors header may name that numpy holds (BF16 and F8 it does not).
DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
}


@dataclass(frozen=True)
class Declared:
    """One tensor as the file's header declares it: its type, shape and bytes."""

    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


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
    # One open file for the header and the tensors: a model replaced between two opens
    # (make_model.py writes by rename) would pair one file's header with another's bytes.
    try:
        with path.open("rb") as file:
            return _load_open(file, name)
    except OSError as error:
        raise ModelFileError(f"{name}: cannot read model file ({error.strerror})") from None


def _load_open(file: BinaryIO, name: str) -> Model:
    """The model in an open file: header, settings and declared tensors checked before any
    tensor is read."""
    declared, metadata, data_start = read_header(file, name)
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (no settings)")
    recorded = metadata.get(SETTINGS_DIGEST_KEY)
    if recorded is not None and hashlib.sha256(text.encode()).hexdigest() != recorded:
        raise ModelFileError(f"{name}: model file is damaged (its settings fail their SHA-256)")
    try:
        settings = json.loads(text)
    except (json.JSONDecodeError, RecursionError, MemoryError):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (bad settings)") from None
    if not isinstance(settings, dict):
        raise ModelFileError(f"{name}: not an ind_knn_ad model file (bad settings)")
    digests = settings.pop(DIGESTS, None)
    if (digests is None) != (recorded is None):
        raise ModelFileError(f"{name}: model file is damaged (its SHA-256 record is incomplete)")
    if digests is not None and (not isinstance(digests, dict) or set(digests) != set(declared)):
        raise ModelFileError(f"{name}: model file is damaged (its tensors are not those recorded)")
    method = validate_settings(settings, name)
    _check_fits_memory(settings, name)
    _check_declared(declared, settings, method, name)
    tensors = _read_tensors(file, declared, data_start, name)
    if digests is not None:
        _verify_digests(digests, tensors, name)
    graph = tensors.pop("feature_graph")
    validate_tensors(settings, tensors, method, name)
    wanted = method.tensor_specs(settings, name)
    return Model(settings, graph.tobytes(), {key: tensors[key] for key in wanted})


def _read_tensors(
    file: BinaryIO, declared: dict[str, Declared], data_start: int, name: str
) -> dict[str, np.ndarray]:
    """Every tensor of a file whose header was checked (`_check_declared`), as little-endian
    arrays of the declared types and shapes, each in its own writable buffer."""
    tensors = {}
    for key, entry in declared.items():
        buffer = bytearray(entry.size)
        file.seek(data_start + entry.start)
        if file.readinto(buffer) != entry.size:
            raise ModelFileError(f"{name}: not a readable model file (tensor {key!r} is cut short)")
        dtype = entry.dtype.newbyteorder("<")
        tensors[key] = np.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
    return tensors


def _verify_digests(digests: dict[str, Any], tensors: dict[str, np.ndarray], source: str) -> None:
    """Every tensor in the file (those recorded, as checked) has the bytes the writer wrote."""
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


def _check_declared(
    declared: dict[str, Declared], settings: dict[str, Any], method: Method, source: str
) -> None:
    """The header declares exactly the feature graph and the method's tensors, each of
    its spec's type and shape, within this machine's memory: checked before any is read,
    so that a crafted size costs nothing."""
    graph = declared.get("feature_graph")
    if graph is None:
        raise ModelFileError(f"{source}: model file lacks its feature graph")
    specs = method.tensor_specs(settings, source)
    unknown = sorted(set(declared) - set(specs) - {"feature_graph"})
    if unknown:
        raise ModelFileError(
            f"{source}: model file holds tensor {unknown[0]!r}, which a {method.name} model "
            "does not have"
        )
    graph_spec = {"feature_graph": TensorSpec(np.uint8, (None,), "feature graph")}
    shapes = {key: (entry.dtype, entry.shape) for key, entry in declared.items()}
    check_shapes({**graph_spec, **specs}, shapes, source)
    total, have = sum(entry.size for entry in declared.values()), available_memory()
    if total > have:
        raise ModelFileError(
            f"{source}: cannot load this model here: its tensors take {total / 1e9:.3g} GB, "
            f"more than the {have / 1e9:.3g} GB of memory here"
        )


def read_header(file: BinaryIO, name: str) -> tuple[dict[str, Declared], dict[str, str], int]:
    """The tensors a safetensors file declares, laid end to end over exactly its data
    bytes, its metadata, and where its data starts: from the header alone, so nothing
    declared is read yet."""
    size = os.fstat(file.fileno()).st_size
    prefix = file.read(8)
    length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
    if length is None or not 2 <= length <= min(size - 8, HEADER_LIMIT):
        raise ModelFileError(
            f"{name}: not a readable model file (header length {length} does not fit "
            f"its {size} bytes)"
        )
    text = file.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        header = None
    metadata = header.pop("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{name}: not a readable model file (bad header)")
    declared = {key: _declared(key, entry, name) for key, entry in header.items()}
    at = 0
    for key, entry in sorted(declared.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != at:
            raise ModelFileError(
                f"{name}: not a readable model file (tensor {key!r} starts at data byte "
                f"{entry.start}, not {at}: tensors overlap or leave a gap)"
            )
        at = entry.end
    if at != size - 8 - length:
        raise ModelFileError(
            f"{name}: not a readable model file (its tensors take {at} bytes, its data "
            f"{size - 8 - length})"
        )
    return declared, metadata, 8 + length


def _declared(key: str, entry: object, name: str) -> Declared:
    """One header entry, its byte range the size its type and shape take."""
    entry = entry if isinstance(entry, dict) else {}
    dtype, shape, offsets = (entry.get(field) for field in ("dtype", "shape", "data_offsets"))
    if (
        not isinstance(dtype, str)
        or dtype not in DTYPES
        or not isinstance(shape, list)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(map(_count, [*shape, *offsets]))
    ):
        raise ModelFileError(f"{name}: not a readable model file (bad header entry {key!r})")
    declared = Declared(np.dtype(DTYPES[dtype]), tuple(shape), *offsets)
    takes = math.prod(shape) * declared.dtype.itemsize
    if declared.size != takes:
        raise ModelFileError(
            f"{name}: not a readable model file (tensor {key!r} spans {declared.size} bytes, "
            f"not the {takes} its shape takes)"
        )
    return declared


def _count(value: object) -> bool:
    """A whole number from 0: a size or an offset (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

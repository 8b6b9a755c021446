"""The model file: one safetensors file, versioned, validated on load, written atomically.

Every file holds `feature_graph`, the patch-feature network as ONNX bytes (uint8), so
scoring needs neither torch nor the backbone's weights, and one JSON document of settings
under the metadata key `ind_knn_ad`. The setting `method` names the method
(`ind_knn_ad.methods`), which says which other tensors the file must hold, their types and
shapes, and which settings of its own it needs.

The first method's files are exactly what they were in version 1; the others' lack its
tensor, so an older tool refuses them rather than misreading them. Version 2 adds
`preprocess.align` (the part alignment box); only files that use it are written as version
2, so that a tool which would ignore it refuses them. Nothing
is ever unpickled: safetensors is a JSON header plus raw little-endian arrays, so a crafted
file can at worst fail to load.

Integrity: the settings hold `sha256`, the SHA-256 of every tensor (its name, type and
shape, then its bytes), and the metadata key `ind_knn_ad.sha256` holds the SHA-256 of the
settings text itself, so any flipped bit in the file is refused on load. Both are additive:
the format version is unchanged, older tools read such files as before (unverified), and
files written before the digests existed are still read, unverified. One record without
the other is refused, so a single damaged byte cannot make a file pass for an old one.
Settings are type-checked strictly (a JSON `true` is not a number).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.images import shown_name

if TYPE_CHECKING:
    from ind_knn_ad.methods import Method

FORMAT = "ind_knn_ad.model"
# The newest version this tool reads and writes. Version 2 added `preprocess.align`; a
# file without it is still written as version 1, which older tools read.
FORMAT_VERSION = 2
METADATA_KEY = "ind_knn_ad"
DIGESTS = "sha256"  # settings key: tensor name -> SHA-256 (see tensor_digest)
SETTINGS_DIGEST_KEY = "ind_knn_ad.sha256"  # metadata key: SHA-256 of the settings text
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
    "train_images": int,
    "dataset": str,
    "versions": dict,
}


@dataclass
class Model:
    """Everything scoring needs, plus the provenance recorded at fit time.

    `tensors` holds the method's arrays by their names in the file; the feature graph is
    kept apart, as every method has one.
    """

    settings: dict[str, Any]
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
    _check_types(settings, _method(settings, source).required_settings, source)
    if version not in (1, FORMAT_VERSION):
        raise ModelFileError(f"{source}: unsupported model format version {version}")
    if version < required_version(settings["preprocess"]):
        raise ModelFileError(f"{source}: preprocess 'align' needs model format version 2")
    threshold = settings["threshold"].get("value")
    if not _number(threshold):
        raise ModelFileError(f"{source}: threshold value is missing or not a finite number")
    _check_values(settings, source)


def _method(settings: dict[str, Any], source: str) -> Method:
    """The method of settings whose types are checked; ModelFileError if it is unknown.

    Imported here, not at the top: the methods import this module for its errors and
    helpers.
    """
    from ind_knn_ad import methods

    method = methods.find(settings["method"])
    if method is None:
        known = ", ".join(methods.names())
        raise ModelFileError(f"{source}: unknown method {settings['method']!r} (known: {known})")
    return method


def _number(value: object) -> bool:
    """A finite JSON number; not a bool, which Python counts as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(settings: dict[str, Any], source: str) -> None:
    """The settings scoring reads, each of the JSON type and range it must have."""
    for key in ("neighbourhood", "feature_dim", "train_images"):
        if not positive_int(settings[key]):
            raise ModelFileError(f"{source}: setting {key!r} is not a positive whole number")
    layers = settings["layers"]
    if not layers or not all(_stage(layer) for layer in layers):
        raise ModelFileError(f"{source}: setting 'layers' is not a list of stage numbers")
    if "feature_grid" in settings:
        feature_positions(settings, source)
    problem = _preprocess_problem(settings["preprocess"])
    if problem:
        raise ModelFileError(f"{source}: bad preprocess settings ({problem})")


def _preprocess_problem(preprocess: dict[str, Any]) -> str | None:
    """What is wrong with the preprocess settings, or None."""
    for key in ("resize", "crop"):
        if not positive_int(preprocess.get(key)):
            return f"{key} is missing or not a positive whole number"
    if preprocess["crop"] > preprocess["resize"]:
        return f"crop {preprocess['crop']} is larger than resize {preprocess['resize']}"
    for key in ("mean", "std"):
        values = preprocess.get(key)
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(map(_number, values))
        ):
            return f"{key} is not three finite numbers, one per colour channel"
    if not all(value > 0 for value in preprocess["std"]):
        return "std is not positive"
    if "align" in preprocess:
        box = preprocess["align"]
        sides = [box.get(key) for key in ("length", "breadth")] if isinstance(box, dict) else []
        if len(sides) != 2 or not all(_number(side) and 0 < side <= 4 for side in sides):
            return "align is not a length and breadth in (0, 4]"
    return None


def required_version(preprocess: dict[str, Any]) -> int:
    """The lowest format version that holds these preprocess settings: 2 with `align`."""
    return 2 if "align" in preprocess else 1


def _check_types(settings: dict[str, Any], required: dict[str, type], source: str) -> None:
    for key, kind in required.items():
        value = settings.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{source}: setting {key!r} is missing or not a {kind.__name__}")


def tensor_digest(name: str, array: np.ndarray) -> str:
    """SHA-256 of a tensor's name, type and shape, then its bytes as stored."""
    digest = hashlib.sha256(f"{name} {array.dtype.str} {list(array.shape)}\n".encode())
    digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def serialise(model: Model) -> bytes:
    """The model file's bytes, with the digests of every tensor and of the settings."""
    from safetensors.numpy import save

    settings = {key: value for key, value in model.settings.items() if key != DIGESTS}
    validate_settings(settings)
    arrays = dict(model.tensors)
    validate_tensors(settings, arrays)
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


def check_writable(path: Path) -> None:
    """Raise OSError now if `path` could not be written later, so that a long fit does not
    end in a failed save. Creates the missing parent folders, as the save would."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    _refuse_special(path)
    probe = _temporary_beside(path)
    with open(probe, "xb"):
        pass
    os.unlink(probe)


_SPECIAL_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _refuse_special(path: Path) -> None:
    """Raise OSError if `path` (followed through links) exists and is not a regular file:
    a rename would replace the device node, FIFO or socket itself (`--model /dev/full` as
    root turned the device into a 3 MB file)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(mode):
        kind = _SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise OSError(
            errno.EEXIST, f"is {kind}, not a regular file: refusing to replace it", str(path)
        )


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that `folder`'s file system takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _temporary_beside(path: Path) -> Path:
    """A fresh hidden name in the target's folder (created if missing), so that the final
    rename stays on one file system and is atomic. It is never longer than the target's
    own name allows: a name near the limit is cut short in the temporary name, whose
    random part keeps it unique."""
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "parent is not a folder", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    room = _name_max(path.parent) - len(f"..{token}.tmp")
    name = os.fsencode(path.name)
    if len(name) > room:
        name = name[: max(room, 0)]
    return path.parent / os.fsdecode(b"." + name + b"." + token.encode() + b".tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file beside the target, flushed to disk, then renamed over it.

    Readers see either the old file or the new one, never a torn one; a failed write (full
    disk) or an interrupt (Ctrl-C, SIGTERM) leaves the old file in place and no temporary
    file behind. The new file gets the usual permissions (0666 less the umask), so other
    users can read a model as they could any file this user writes.
    """
    write_together([(Path(path), data)])


def write_together(files: list[tuple[Path, bytes]]) -> None:
    """Write several files as one unit (a model, its results and its contact sheet).

    Each goes to a temporary file beside its target, flushed to disk; only when all are
    written are they renamed over their targets, one after another with SIGINT and SIGTERM
    held back, so that an interrupt leaves either every old file or every new one (the
    interrupt then arrives just after). A failure or interrupt before the renames removes
    the temporaries and leaves the old files.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path = Path(path)
            _refuse_special(path)
            temporary = _temporary_beside(path)
            pending.append((temporary, path))
            with open(temporary, "xb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        with _interrupts_held():
            for temporary, path in pending:
                os.replace(temporary, path)
    except BaseException:
        for temporary, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
    for folder in dict.fromkeys(path.parent for _, path in pending):
        _fsync_folder(folder)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then take effect as they would have.

    Their Python handlers are swapped for ones that only note the signal. A signal mask
    would not do: it holds back the calling thread alone, and the kernel may hand the
    process's signal to any thread (fits run thread pools), whose delivery Python then
    acts on in the main thread at once. Handlers can only be set from the main thread;
    elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda got, _: caught.append(got)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in caught:
            signal.raise_signal(number)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable, so a power cut cannot bring the old file back."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    validate_settings(settings, name)
    _check_fits_memory(settings, name)
    graph = tensors.pop("feature_graph", None)
    if graph is None:
        raise ModelFileError(f"{name}: model file lacks its feature graph")
    validate_tensors(settings, tensors, name)
    wanted = _method(settings, name).tensor_specs(settings, name)
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
    from ind_knn_ad.io.limits import SCORE_BYTES_PER_PIXEL, input_too_large
    from ind_knn_ad.io.preprocess import Preprocess

    try:
        width, height = Preprocess.from_dict(settings["preprocess"]).size
    except ValueError as error:  # the align box's own range check
        raise ModelFileError(f"{source}: bad preprocess settings ({error})") from None
    problem = input_too_large(width, height, SCORE_BYTES_PER_PIXEL)
    if problem:
        raise ModelFileError(f"{source}: cannot score with this model here: {problem}")


def _stage(value: object) -> bool:
    """A backbone stage number: a whole number from 0 (the stem) up."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def positive_int(value: object) -> bool:
    """A whole number above 0; not a bool, which Python counts as an int."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def feature_positions(settings: dict[str, Any], source: str) -> int:
    """The patch positions of the feature grid, h*w; ModelFileError for a bad grid."""
    grid = settings["feature_grid"]
    if not isinstance(grid, list) or len(grid) != 2 or not all(map(positive_int, grid)):
        raise ModelFileError(f"{source}: feature grid {grid!r} is not two positive integers")
    return grid[0] * grid[1]


def largest_value(channels: int) -> float:
    """The largest magnitude a stored float may have: a squared distance sums `channels`
    squared differences in float32, which stays finite, with a margin of 2**20 for the
    sums scoring builds on it, when no value exceeds this (7e14 for 152 channels; real
    features are below 1e3)."""
    return math.sqrt(float(np.finfo(np.float32).max) / (4 * channels)) / 2**10


def validate_tensors(
    settings: dict[str, Any], tensors: dict[str, np.ndarray], source: str = "model"
) -> None:
    """Raise ModelFileError unless the method's tensors are all there, typed and shaped as
    its (already validated) settings say, and finite: scoring then trusts every shape and
    index without checking again."""
    method = _method(settings, source)
    specs = method.tensor_specs(settings, source)
    largest = largest_value(settings["feature_dim"])
    labels = {key: spec.label or key for key, spec in specs.items()}
    missing = [key for key in specs if key not in tensors]
    if missing:
        what = labels[missing[0]] if len(missing) == 1 else ", ".join(missing)
        raise ModelFileError(f"{source}: model file lacks its {what}")
    for key, spec in specs.items():
        array, label, dtype, sizes = tensors[key], labels[key], spec.dtype, spec.shape
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
        if dtype is np.float32 and np.abs(array).max() > largest:
            raise ModelFileError(
                f"{source}: {label} holds values beyond +-{largest:.3g}, where distances "
                "between features would overflow"
            )
    method.check_tensors(settings, tensors, source)

"""What a model file holds: its format name and versions, the settings every file needs
with their JSON types, the `Model` scoring receives, and the checks of settings and tensors.

The setting `method` names the method (`ind_knn_ad.methods`), which says which other
tensors the file must hold (`TensorSpec`), their types and shapes, and which settings of
its own it needs. This module knows a method only by that shape (`MethodSchema`), so the
methods can build on it without the two importing each other; the store
(`model_file.store`) looks the method up.

The first method's files are exactly what they were in version 1; the others' lack its
tensor, so an older tool refuses them rather than misreading them. Version 2 adds
`preprocess.align` (the part alignment box); only files that use it are written as version
2, so that a tool which would ignore it refuses them. Settings are type-checked strictly
(a JSON `true` is not a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ind_knn_ad.errors import ModelFileError

FORMAT = "ind_knn_ad.model"
# The newest version this tool reads and writes. Version 2 added `preprocess.align`; a
# file without it is still written as version 1, which older tools read.
FORMAT_VERSION = 2

# The ranges make_model.py can write: no backbone has more stages than 0..LAST_STAGE, and
# a patch neighbourhood wider than LARGEST_NEIGHBOURHOOD would average the feature map away.
LAST_STAGE = 7
LARGEST_NEIGHBOURHOOD = 31

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


@dataclass(frozen=True)
class TensorSpec:
    """A stored tensor's type and shape (None: any size above 0), and what messages call
    it (its name when empty)."""

    dtype: type
    shape: tuple[int | None, ...]
    label: str = ""


class MethodSchema(Protocol):
    """What the schema asks of a method (`methods.Method` has it): its settings' types,
    its tensors' specs and any check of their values."""

    required_settings: ClassVar[dict[str, type]]

    def tensor_specs(self, settings: dict[str, Any], source: str) -> dict[str, TensorSpec]: ...

    def check_tensors(
        self, settings: dict[str, Any], tensors: dict[str, np.ndarray], source: str
    ) -> None: ...


def check_format(settings: dict[str, Any], source: str) -> None:
    """An ind_knn_ad model this tool is not too old for, with every shared setting of its
    JSON type; the method's own are checked next (`check_types`), then `check_values`."""
    if settings.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not an ind_knn_ad model file")
    version = settings.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: model format version {version} is newer than this tool supports "
            f"({FORMAT_VERSION}); upgrade anomaly_detector"
        )
    check_types(settings, REQUIRED, source)


def check_values(settings: dict[str, Any], source: str) -> None:
    """The version, the threshold and the settings scoring reads, of the range they need."""
    version = settings["format_version"]
    if version not in (1, FORMAT_VERSION):
        raise ModelFileError(f"{source}: unsupported model format version {version}")
    if version < required_version(settings["preprocess"]):
        raise ModelFileError(f"{source}: preprocess 'align' needs model format version 2")
    threshold = settings["threshold"].get("value")
    if not _number(threshold) or threshold <= 0:  # as --threshold: scores are distances
        raise ModelFileError(f"{source}: threshold value is missing or not a finite number above 0")
    _check_values(settings, source)


def _number(value: object) -> bool:
    """A finite JSON number; not a bool, which Python counts as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(settings: dict[str, Any], source: str) -> None:
    """The settings scoring reads, each of the JSON type and range it must have."""
    for key in ("neighbourhood", "feature_dim", "train_images"):
        if not positive_int(settings[key]):
            raise ModelFileError(f"{source}: setting {key!r} is not a positive whole number")
    neighbourhood = settings["neighbourhood"]
    if neighbourhood % 2 == 0 or neighbourhood > LARGEST_NEIGHBOURHOOD:
        raise ModelFileError(
            f"{source}: setting 'neighbourhood' {neighbourhood} is not an odd number from 1 "
            f"to {LARGEST_NEIGHBOURHOOD}"
        )
    layers = settings["layers"]
    if not layers or not all(_stage(layer) for layer in layers):
        raise ModelFileError(
            f"{source}: setting 'layers' is not a list of stage numbers from 0 to {LAST_STAGE}"
        )
    if "coreset" in settings:
        _check_coreset(settings["coreset"], source)
    if "feature_grid" in settings:
        feature_positions(settings, source)
    problem = _preprocess_problem(settings["preprocess"])
    if problem:
        raise ModelFileError(f"{source}: bad preprocess settings ({problem})")


def _check_coreset(coreset: object, source: str) -> None:
    """The coreset record is what a fit writes: a fraction in (0, 1] (as --coreset) or
    none, and a bank size no larger than the patches it was chosen from."""
    if not isinstance(coreset, dict):
        raise ModelFileError(f"{source}: setting 'coreset' is not a dict")
    fraction = coreset.get("fraction")
    if fraction is not None and not (_number(fraction) and 0 < fraction <= 1):
        raise ModelFileError(f"{source}: setting 'coreset' fraction {fraction!r} is not in (0, 1]")
    size, total = coreset.get("size"), coreset.get("total_patches")
    if not (positive_int(size) and positive_int(total) and size <= total):
        raise ModelFileError(
            f"{source}: setting 'coreset' size {size!r} is not a bank size from 1 to its "
            f"total_patches {total!r}"
        )


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


def check_types(settings: dict[str, Any], required: dict[str, type], source: str) -> None:
    """Each of `required` is there with its JSON type (a JSON `true` is not a number)."""
    for key, kind in required.items():
        value = settings.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{source}: setting {key!r} is missing or not a {kind.__name__}")


def _stage(value: object) -> bool:
    """A backbone stage number: a whole number from 0 (the stem) to LAST_STAGE."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LAST_STAGE


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
    settings: dict[str, Any],
    tensors: dict[str, np.ndarray],
    method: MethodSchema,
    source: str = "model",
) -> None:
    """Raise ModelFileError unless the method's tensors are all there, typed and shaped as
    its (already validated) settings say, and finite: scoring then trusts every shape and
    index without checking again."""
    specs = method.tensor_specs(settings, source)
    largest = largest_value(settings["feature_dim"])
    check_shapes(specs, {key: (array.dtype, array.shape) for key, array in tensors.items()}, source)
    for key, spec in specs.items():
        array, label, dtype = tensors[key], spec.label or key, spec.dtype
        if dtype is np.float32 and not np.isfinite(array).all():
            raise ModelFileError(f"{source}: {label} holds non-finite values")
        if dtype is np.float32 and np.abs(array).max() > largest:
            raise ModelFileError(
                f"{source}: {label} holds values beyond +-{largest:.3g}, where distances "
                "between features would overflow"
            )
    method.check_tensors(settings, tensors, source)


def check_shapes(
    specs: dict[str, TensorSpec],
    shapes: dict[str, tuple[np.dtype, tuple[int, ...]]],
    source: str,
) -> None:
    """Every spec'd tensor is among `shapes` (type and shape, as the loaded array or the
    file's header says) with its spec's type and shape, and not empty."""
    labels = {key: spec.label or key for key, spec in specs.items()}
    missing = [key for key in specs if key not in shapes]
    if missing:
        what = labels[missing[0]] if len(missing) == 1 else ", ".join(missing)
        raise ModelFileError(f"{source}: model file lacks its {what}")
    for key, spec in specs.items():
        dtype, shape = shapes[key]
        if (
            dtype != spec.dtype
            or len(shape) != len(spec.shape)
            or any(
                got != want for got, want in zip(shape, spec.shape, strict=True) if want is not None
            )
            or math.prod(shape) == 0
        ):
            expected = ", ".join("K" if size is None else str(size) for size in spec.shape)
            raise ModelFileError(
                f"{source}: {labels[key]} has shape {tuple(shape)} and type {np.dtype(dtype)}, "
                f"expected ({expected}) {np.dtype(spec.dtype)}"
            )

"""Which device a run asks for, checked one way for fitting (torch) and scoring (ONNX
Runtime): each side says whether it has CUDA, this says what that means.

Standard library only (and `errors`), so scoring can import it without torch.
"""

from __future__ import annotations

from collections.abc import Callable

from ind_knn_ad.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def cuda_unavailable(reason: str) -> ConfigError:
    """The error for CUDA asked for but not to be had, `reason` saying why."""
    return ConfigError(f"device cuda was asked for, but {reason}", setting="device")


def resolve_device(
    name: str, has_cuda: Callable[[], bool], missing: str = "no CUDA GPU is available"
) -> str:
    """`cpu` or `cuda` for a device asked for by `name` (auto: CUDA when `has_cuda()`);
    ConfigError for an unknown name, or for cuda without it (`missing` says why)."""
    if name not in DEVICES:
        raise ConfigError(f"device must be auto, cpu or cuda, not {name!r}", setting="device")
    if name == "cpu":
        return "cpu"
    if has_cuda():
        return "cuda"
    if name == "cuda":
        raise cuda_unavailable(missing)
    return "cpu"

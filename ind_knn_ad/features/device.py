"""The torch device a fit runs on (scoring picks its ONNX Runtime provider in `runtime`)."""

from __future__ import annotations

import torch


def select_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)

"""The torch device a fit runs on (scoring picks its ONNX Runtime provider in `runtime`)."""

from __future__ import annotations

import torch

from ind_knn_ad.devices import resolve_device


def select_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA without one is a
    ConfigError (`devices.resolve_device`)."""
    return torch.device(resolve_device(name, torch.cuda.is_available))

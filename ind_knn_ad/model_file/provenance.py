"""What a model records about the software that made it, so a fit can be traced later."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ind_knn_ad import __version__


def package_versions() -> dict[str, str]:
    """Versions of the packages a model was made with, recorded for provenance."""
    found = {"ind_knn_ad": __version__}
    for package in ("torch", "timm", "onnx", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found

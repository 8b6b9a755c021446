"""The two commands, as installed (`anomaly-detector`, `make-model`: pyproject.toml's
entry points) and as run by the top-level scripts.

Standard library only until a command is chosen: a resident call (`--resident`) must not
pay for NumPy and ONNX Runtime, and `make-model` in a scoring-only install must say what
to install rather than fail on its first import.
"""

from __future__ import annotations

import os
import sys

from ind_knn_ad.cli.environment import missing_modules

RESIDENT = "ANOMALY_DETECTOR_RESIDENT"  # "1": every call as with --resident (cli/resident.py)
USAGE = 2  # exit_codes.USAGE, not imported (its logging would slow a resident call)
# What `pip install 'ind_knn_ad[fit]'` adds (requirements-fit.txt), as import names.
FIT_MODULES = ("torch", "torchvision", "timm", "sklearn", "rich", "onnx")


def _quiet_runtime() -> None:
    """ONNX Runtime's telemetry writes a device ID under HOME and warns on stderr where it
    cannot; neither command sends anything anywhere."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def anomaly_detector(argv: list[str] | None = None) -> int:
    """Score images (ind_knn_ad.cli.score), through the resident scorer when asked."""
    _quiet_runtime()
    arguments = sys.argv[1:] if argv is None else argv
    if "--resident" in arguments or os.environ.get(RESIDENT) == "1":
        from ind_knn_ad.cli import resident  # only then: a plain call needs no sockets

        code = resident.call(arguments) if resident.usable(arguments) else None
        if code is not None:
            return code
    from ind_knn_ad.cli.score import main

    return main(argv)


def make_model(argv: list[str] | None = None) -> int:
    """Fit a model (ind_knn_ad.cli.fit); in a scoring-only install, one line saying how
    to add the fit (exit code 2)."""
    missing = missing_modules(FIT_MODULES)
    if missing:
        name = os.path.basename(sys.argv[0])
        print(
            f"{name}: fitting needs {', '.join(missing)}, not installed; add them with "
            "`pip install 'ind_knn_ad[fit]'` (from a source tree: `pip install '.[fit]'`)",
            file=sys.stderr,
        )
        return USAGE
    _quiet_runtime()
    from ind_knn_ad.cli.fit import main

    return main(argv)

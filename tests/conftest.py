"""Shared fixtures: the synthetic sample set, a model fitted on it, and real-data paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ind_knn_ad.io.datasets import REAL_DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
_CPUINFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def _numpy_dispatch_targets() -> str:
    """NumPy's run-time SIMD targets on this CPU (AVX2, AVX-512, ...), space-separated."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return " ".join(__cpu_dispatch__)


# Arithmetic other users' CPUs would do, forced on this one: OpenBLAS kernels for SSE3 (with
# NumPy's own loops held to its baseline too), AVX2 and, where the CPU has it, AVX-512.
ARITHMETIC = {
    "Prescott, NumPy baseline": {
        "OPENBLAS_CORETYPE": "Prescott",
        "NPY_DISABLE_CPU_FEATURES": _numpy_dispatch_targets(),
    },
    "Haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    **({"SkylakeX": {"OPENBLAS_CORETYPE": "SkylakeX"}} if "avx512f" in _CPUINFO else {}),
}


def run_script(*args: str | Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the two top-level scripts as a user would, capturing text output."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=kwargs.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def mvtec_folder(name: str) -> Path:
    """A real MVTec AD folder from ../shared, or skip the test saying what is missing."""
    folder = REAL_DATA_DIR / name
    if not (folder / "train" / "good").is_dir():
        pytest.skip(
            f"real MVTec data not found at {folder} (it lives in ../shared/data/mvtec, "
            "or where IND_KNN_AD_REAL_DATA points)"
        )
    return folder


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic synthetic metal-nut set, in MVTec layout."""
    from ind_knn_ad.io.sample_data import generate_sample_dataset

    return generate_sample_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sample_model(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An efficientnet_lite0 model fitted on the sample set through make_model.py; what the
    script printed is kept beside it as `sample.stdout`."""
    model = tmp_path_factory.mktemp("model") / "sample.safetensors"
    result = fit_efficientnet(sample_dataset, model)
    model.with_suffix(".stdout").write_text(result.stdout)
    return model


def fit_efficientnet(data: Path, model: Path, *options: str) -> subprocess.CompletedProcess:
    """make_model.py with the offline backbone on the CPU, as a user would run it, with the
    fixed settings (what the automatic choice does is tested in test_autosettings_cli.py)."""
    return run_script(
        "make_model.py",
        "--data-dir",
        data,
        "--settings",
        "fixed",
        "--backbone",
        "efficientnet_lite0",
        "--model",
        model,
        "--device",
        "cpu",
        *options,
    )

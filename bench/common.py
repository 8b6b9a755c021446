"""Shared by the benchmark scripts: run a command as a user would, time it, read its peak
memory, and print figures with their spread and the command that produced them."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ind_knn_ad.calibration.threshold import cut_counts
from ind_knn_ad.config import FitConfig
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.datasets import REAL_DATA_DIR as MVTEC
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.patchcore.image_score import score_features

ROOT = Path(__file__).resolve().parent.parent
BOTTLE = MVTEC / "bottle_256"
FULLRES = MVTEC / "bottle_fullres_samples"
# Model and generated data live here between scripts (override with BENCH_DIR).
WORK = Path(os.environ.get("BENCH_DIR", Path(tempfile.gettempdir()) / "ind_knn_ad_bench"))
MODEL = WORK / "bottle.safetensors"
PYTHON = sys.executable


@dataclass(frozen=True)
class Run:
    """One finished command: wall seconds from start to exit, its peak RSS, its output, and
    the CPU seconds (user + system) it used, which other processes on the machine inflate
    far less than the wall time."""

    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0


def run(command: list[str | Path], expect: int = 0, env: dict[str, str] | None = None) -> Run:
    """Run `command` from the repository root (in `env`, else this environment); fail loudly
    if it exits other than `expect`.

    The child is reaped with wait4, which gives that child's own peak RSS (ru_maxrss); the
    RUSAGE_CHILDREN total would only give the largest of all children so far.
    """
    command = [str(part) for part in command]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != expect:
        raise SystemExit(f"{shown(command)} exited {process.returncode}:\n{stderr[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, usage.ru_maxrss / 1024, stdout, stderr, cpu)


def shown(command: list[str | Path]) -> str:
    """The command as one could paste it into a shell, relative to the repository root."""
    parts = []
    for part in map(str, command):
        if part == PYTHON:
            part = "python"
        elif part.startswith(str(ROOT.parent) + os.sep):
            part = os.path.relpath(part, ROOT)
        parts.append(shlex.quote(part))
    return " ".join(parts)


def spread(values: list[float], unit: str, digits: int = 2) -> str:
    """`median unit (min-max, n runs)`."""
    return (
        f"{statistics.median(values):.{digits}f} {unit} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f}, {len(values)} runs)"
    )


def report(name: str, command: list[str | Path], figures: dict[str, str]) -> None:
    """Print one benchmark's figures under the command that produced them."""
    print(f"\n== {name}\n$ {shown(command)}")
    for key, value in figures.items():
        print(f"  {key:<22} {value}")
    sys.stdout.flush()


OFFLINE = "efficientnet_lite0"


def model_path(backbone: str = OFFLINE) -> Path:
    """Where the bottle_256 model of `backbone` is kept between scripts."""
    return MODEL if backbone == OFFLINE else WORK / f"bottle_{backbone}.safetensors"


def fit_command(data_dir: Path, model: Path, backbone: str = OFFLINE) -> list[str | Path]:
    """A fit with the fixed settings, so figures compare across revisions
    (bench/auto_settings.py measures the automatic choice), replacing `model` if there."""
    return [
        PYTHON,
        ROOT / "make_model.py",
        "--settings",
        "fixed",
        "--data-dir",
        data_dir,
        "--backbone",
        backbone,
        "--device",
        "cpu",
        "--model",
        model,
        "--force",
    ]


def ensure_model(backbone: str = OFFLINE) -> Path:
    """The bottle_256 model the scoring benchmarks use, fitted once if missing."""
    model = model_path(backbone)
    if not model.is_file():
        if not (BOTTLE / "train" / "good").is_dir():
            raise SystemExit(f"benchmark data not found at {BOTTLE}")
        print(f"fitting {model} first ...", flush=True)
        run(fit_command(BOTTLE, model, backbone))
    return model


def machine() -> str:
    """CPU model, core count and memory, for the figures' context."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (OSError, ValueError):
        memory = "unknown memory"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {memory}; load average now {load}"


def image_scores(
    features: np.ndarray,
    grid: tuple[int, int],
    bank: np.ndarray,
    rule: str = "max",
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Image scores of (N, h*w, C) training-layout features against a bank, each image on
    its (N, h*w) `regions` where given."""
    batch = features.reshape(len(features), *grid, -1).transpose(0, 3, 1, 2)
    counted = None if regions is None else regions.reshape(len(features), *grid)
    results = score_features(batch, bank, rule, maps=False, regions=counted)
    return np.array([result.score for result in results])


def fewest_errors(good: np.ndarray, defective: np.ndarray) -> int:
    """The fewest test images misclassified at any threshold: what regret is counted from."""
    _, false_alarms, caught = cut_counts(good, defective)
    return int((false_alarms + defective.size - caught).min())


# The settings the automatic choice makes for each shared set (docs/benchmarks.md, "Settings
# chosen from good images"), so benchmarks of later steps fit what a user's default fit does.
CHOSEN = {
    "bottle_256": FitConfig(backbone="efficientnet_lite0", image_score="max"),
    "hazelnut_reduced": FitConfig(backbone="efficientnet_lite2", image_score="max"),
    "transistor_reduced": FitConfig(backbone="efficientnet_lite0", image_score="max"),
    "screw_512": FitConfig(backbone="efficientnet_lite0", coreset=0.01, image_score="top10"),
    "grid_512": FitConfig(
        backbone="efficientnet_lite0",
        coreset=0.01,
        image_score="max",
        preprocess=Preprocess(resize=512, crop=512),
    ),
}
ALIGNED = {"screw_512": 512}  # sets the choice aligns, and the size it aligns them at


def chosen_settings(name: str, train: list[Path], seed: int = 0) -> FitConfig:
    """The automatic choice's settings for shared set `name`, aligned on the parts of
    `train` where the choice aligns."""
    settings = replace(CHOSEN[name], seed=seed)
    if name in ALIGNED:
        box = measure_box(train)
        settings = replace(settings, preprocess=Preprocess(resize=ALIGNED[name], align=box))
    return settings


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A temporary checkout of `revision` beside this one, removed afterwards, for scripts
    that compare an earlier revision with the working tree."""
    with tempfile.TemporaryDirectory() as work:
        tree = Path(work) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), revision],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)

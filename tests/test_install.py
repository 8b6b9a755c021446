"""The scoring-only install: `pip install .` scores without the fit's packages, byte for
byte as the full install does, and `make-model` says how to add them.

A real base venv is built by bench/install.py (it needs the registry); here the fit's
packages, and the Unix-only modules a Windows Python lacks, are made unimportable in the
full venv (tests/blocked/sitecustomize.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_golden import GOLDEN, MODELS, expected, write_images

from ind_knn_ad.cli.commands import FIT_MODULES
from ind_knn_ad.cli.score import REPORT_MODULES
from ind_knn_ad.io import limits

UNIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp")


def run_without(
    blocked: tuple[str, ...], *args: str | Path, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run Python with `blocked` modules unimportable, as in an install without them."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests' / 'blocked'}{os.pathsep}{ROOT}",
        "IND_KNN_AD_BLOCKED": ",".join(blocked),
    }
    command = [sys.executable, *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, env=env, check=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("golden")
    return folder, write_images(folder)


@pytest.mark.parametrize("stem", MODELS)
def test_the_base_install_scores_every_golden_model_byte_for_byte(
    stem: str, images: tuple[Path, list[str]]
) -> None:
    folder, names = images
    model = GOLDEN / f"{stem}.safetensors"
    script = ROOT / "anomaly_detector.py"
    blocked = FIT_MODULES + REPORT_MODULES + UNIX_ONLY
    result = run_without(blocked, script, "--model", model, *names, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(stem)


def test_the_base_install_draws_heatmaps(images: tuple[Path, list[str]], tmp_path: Path) -> None:
    folder, names = images
    model = GOLDEN / "patchcore_aligned.safetensors"
    script = ROOT / "anomaly_detector.py"
    heatmaps = tmp_path / "maps"
    command = [script, "--model", model, "--heatmap", heatmaps, names[-1]]
    result = run_without(FIT_MODULES + REPORT_MODULES, *command, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert len(list(heatmaps.rglob("*.png"))) == 1


def test_the_base_install_says_how_to_add_reports(images: tuple[Path, list[str]]) -> None:
    folder, names = images
    model = GOLDEN / "patchcore_max.safetensors"
    command = [ROOT / "anomaly_detector.py", "--model", model, "--report", "run.html", names[0]]
    result = run_without(FIT_MODULES + REPORT_MODULES, *command, cwd=folder)
    assert result.returncode == 2 and result.stdout == b""
    assert "pip install 'ind_knn_ad[report]'" in result.stderr.decode()
    assert not (folder / "run.html").exists()


def test_make_model_without_the_fit_extra_says_how_to_add_it(tmp_path: Path) -> None:
    result = run_without(("torch", "sklearn"), ROOT / "make_model.py", "--data-dir", tmp_path)
    assert result.returncode == 2
    assert result.stdout == b""
    line = result.stderr.decode()
    assert line.count("\n") == 1
    assert "torch, sklearn" in line
    assert "pip install 'ind_knn_ad[fit]'" in line


def test_the_entry_points_are_the_scripts_commands(images: tuple[Path, list[str]]) -> None:
    """pyproject.toml's commands exist, and `anomaly-detector` prints what the script does."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, re.MULTILINE))
    assert set(scripts) == {"anomaly-detector", "make-model"}
    folder, names = images
    model = GOLDEN / "spade.safetensors"
    module, function = scripts["anomaly-detector"].split(":")
    program = f"import sys; from {module} import {function} as main; sys.exit(main())"
    result = run_without((), "-c", program, "--model", model, *names, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected("spade")
    module, function = scripts["make-model"].split(":")
    program = f"import sys; from {module} import {function} as main; sys.exit(main())"
    result = run_without((), "-c", program, "--help")
    assert result.returncode == 0
    assert b"--data-dir" in result.stdout


def test_memory_limits_without_the_resource_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no `resource`: no address-space limit, and the memory checks still work."""
    monkeypatch.setattr(limits, "resource", None)
    assert limits.address_space_limit() is None
    assert limits.available_memory() > 0
    assert limits.fit_address_space_problem(4096, 4096) is None
    assert limits.room()[0] is None
    assert limits.input_too_large(1 << 20, 1 << 20, limits.SCORE_BYTES_PER_PIXEL)


def test_the_relaunch_finds_a_windows_venv() -> None:
    from ind_knn_ad.cli import environment

    windows = environment.venv_python(str(ROOT), windows=True)
    assert Path(windows) == ROOT / ".venv" / "Scripts" / "python.exe"
    assert Path(environment.VENV_PYTHON) == ROOT / ".venv" / "bin" / "python"  # here

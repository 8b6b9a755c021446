"""Issue 26, item 1: one odd path costs one line, never the run.

A name over 255 bytes, or a path under a folder that cannot be searched, stopped the whole
scoring run with a traceback (Path.is_dir raised), and stopped make_model.py the same way.
Scoring must still score every good file, with one error line per bad path (exit 1); a fit
must refuse the dataset in one line (exit 4), as it does for an unreadable training image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from test_cli_errors import _without_permission_override, error_lines, records, scorer

from ind_knn_ad.cli import exit_codes

LONG = "a" * 300 + ".png"  # more than the 255 bytes a file name may have


def as_user() -> dict:
    """subprocess options that make root subject to file permissions, as a user is."""
    return {"preexec_fn": _without_permission_override} if os.geteuid() == 0 else {}


@pytest.fixture
def good(sample_dataset: Path, tmp_path: Path) -> Path:
    image = tmp_path / "ok.png"
    shutil.copy(sample_dataset / "test" / "good" / "000.png", image)
    return image


@pytest.fixture
def locked(tmp_path: Path, good: Path) -> Iterator[Path]:
    """A folder no one but root can search, holding a good image."""
    folder = tmp_path / "locked"
    folder.mkdir()
    shutil.copy(good, folder / "x.png")
    folder.chmod(0o000)
    yield folder
    folder.chmod(0o755)


def test_name_too_long_beside_a_good_image(sample_model: Path, good: Path) -> None:
    result = scorer("--model", sample_model, "ok.png", LONG, cwd=good.parent)
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED, result.stderr
    assert [row[0] for row in records(result.stdout)] == ["ok.png"]
    assert error_lines(result.stderr) == [f"ERROR: {LONG}: file name too long"]


def test_file_in_an_unsearchable_folder(sample_model: Path, good: Path, locked: Path) -> None:
    try:
        result = scorer("--model", sample_model, good, locked / "x.png", **as_user())
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's file permission override here ({error})")
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED, result.stderr
    assert [row[0] for row in records(result.stdout)] == [str(good)]
    assert error_lines(result.stderr) == [f"ERROR: {locked / 'x.png'}: permission denied"]


def fit(data_dir: Path | str, tmp_path: Path, **options) -> subprocess.CompletedProcess:
    """make_model.py on `data_dir`, which it must refuse before fitting anything."""
    return subprocess.run(
        [
            *(sys.executable, "make_model.py", "--data-dir", data_dir, "--settings", "fixed"),
            *("--backbone", "efficientnet_lite0", "--model", tmp_path / "m.safetensors"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        **options,
    )


def refused(result: subprocess.CompletedProcess, folder: Path | str, reason: str) -> None:
    assert result.returncode == exit_codes.DATA_ERROR, result.stderr
    assert "Model written" not in result.stdout
    assert error_lines(result.stderr) == [f"error: {folder}: cannot read this folder ({reason})"]


def test_fit_on_a_data_dir_name_too_long(tmp_path: Path) -> None:
    refused(fit(tmp_path / LONG, tmp_path), tmp_path / LONG, "file name too long")


def test_fit_on_a_data_dir_in_an_unsearchable_folder(tmp_path: Path, locked: Path) -> None:
    try:
        result = fit(locked / "data", tmp_path, **as_user())
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's file permission override here ({error})")
    refused(result, locked / "data", "permission denied")


def test_fit_with_an_unreadable_test_folder(sample_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    crack = next(p for p in sorted((data / "test").iterdir()) if p.name != "good")
    crack.chmod(0o000)
    try:
        result = fit(data, tmp_path, **as_user())
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's file permission override here ({error})")
    finally:
        crack.chmod(0o755)
    refused(result, crack, "permission denied")

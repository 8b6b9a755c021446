"""Errors are the library's, exit codes the commands': a data error is the data's (exit 4),
a setting the library refuses is worded as its option (exit 2), and anything else is our
bug, said in one line with its own code (70), in-process so that a library function can
be made to fail."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import ROOT

from ind_knn_ad.cli import exit_codes, fit, preflight
from ind_knn_ad.devices import resolve_device
from ind_knn_ad.errors import ConfigError, DatasetError
from ind_knn_ad.io.datasets import Dataset


def _fit_failing_with(error: Exception, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    """make_model.py's `main`, in-process, with the dataset lookup raising `error`."""

    def fail(*_: object) -> Dataset:
        raise error

    monkeypatch.setattr(preflight, "find_dataset", fail)
    return fit.main(["--data-dir", str(tmp_path), "--model", str(tmp_path / "m.safetensors")])


def test_a_bug_is_one_line_and_its_own_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _fit_failing_with(TypeError("unsupported operand\n  here"), monkeypatch, tmp_path)
    assert code == exit_codes.INTERNAL_ERROR == 70
    assert capsys.readouterr().err.splitlines() == [
        "error: internal error (TypeError: unsupported operand here); this is a bug, please "
        "report it"
    ]


def test_a_bug_shows_its_traceback_with_debug_logging(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # as anomaly_detector.py -l debug sets it
    assert _fit_failing_with(KeyError("k"), monkeypatch, tmp_path) == exit_codes.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: internal error")


def test_a_value_error_in_a_fit_is_not_the_data(tmp_path: Path) -> None:
    """Only the library's data error names the dataset as at fault; a ValueError (a NumPy
    shape bug, say) passes as it is, to be reported as a bug."""
    dataset = Dataset("d", tmp_path, [], [])
    shape_bug = pytest.raises(ValueError, match="operands could not be broadcast")
    with shape_bug, preflight.data_at_fault(dataset):
        raise ValueError("operands could not be broadcast")
    named = pytest.raises(DatasetError, match=f"{tmp_path}: cannot fit on these images")
    with named, preflight.data_at_fault(dataset):
        raise DatasetError("no part found")
    assert exit_codes.exit_code(ValueError("x")) is None


def test_a_refused_setting_is_worded_as_its_option() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_device("cuda", lambda: False)
    assert raised.value.setting == "device"
    assert str(raised.value) == "device cuda was asked for, but no CUDA GPU is available"
    assert exit_codes.message(raised.value) == (
        "--device cuda was asked for, but no CUDA GPU is available"
    )
    assert exit_codes.exit_code(raised.value) == exit_codes.USAGE
    other = ConfigError("keeps 1 patch", setting="coreset")
    assert exit_codes.message(other) == "--coreset: keeps 1 patch"
    assert exit_codes.message(ConfigError("no setting")) == "no setting"


def test_the_readme_documents_the_internal_error_code() -> None:
    table = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"| {exit_codes.INTERNAL_ERROR} | internal error" in table

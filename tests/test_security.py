"""Security: loading a model runs no code from it, and scoring uses no network.

A crafted pickle that would create a marker file is placed where a model (or backbone
weights) is expected; the tools must refuse it and the marker must not appear. A positive
control shows the payload does run when unpickled, so the test would catch it.

Dataset extraction (path traversal, symlinks, hard links, devices) is covered by
tests/test_download.py::test_bad_archives_leave_nothing_behind.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, run_script

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.model_file.store import load_model


class _Payload:
    """Unpickling this runs `code`: exactly what a malicious model file would do."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(f"open({str(marker)!r}, 'w').write('pwned')"))


def torch_style(pickled: bytes) -> bytes:
    """The layout of a torch.save file: a zip whose data.pkl is unpickled on load."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/version", "3\n")
    return stream.getvalue()


def test_the_payload_works_when_unpickled(tmp_path: Path) -> None:
    """Positive control: the payload does run code when something unpickles it."""
    marker = tmp_path / "marker"
    pickle.loads(payload(marker))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("wrap", [bytes, torch_style], ids=["raw-pickle", "torch-zip"])
def test_loading_a_pickle_model_runs_nothing(tmp_path: Path, wrap) -> None:
    marker = tmp_path / "marker"
    model = tmp_path / "model.safetensors"
    model.write_bytes(wrap(payload(marker)))
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(model)
    result = run_script("anomaly_detector.py", "--model", model, "any.png", check=False)
    assert result.returncode == exit_codes.MODEL_ERROR
    assert result.stderr.startswith(f"ERROR: {model}: not a readable model file")
    assert not marker.exists()


def test_pickle_weights_file_runs_nothing(sample_dataset: Path, tmp_path: Path) -> None:
    """make_model.py --weights reads torch files with weights_only=True: no code runs."""
    marker = tmp_path / "marker"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(torch_style(payload(marker)))
    result = run_script(
        "make_model.py",
        "--data-dir",
        sample_dataset,
        "--backbone",
        "efficientnet_lite0",
        "--weights",
        weights,
        "--model",
        tmp_path / "model.safetensors",
        check=False,
    )
    assert result.returncode == exit_codes.BACKBONE_ERROR
    assert "Traceback" not in result.stderr
    assert f"error: {weights}: cannot read weights" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "model.safetensors").exists()


SANDBOX = """
import runpy, sys

def no_network(event, args):
    if event.startswith("socket.") or event.startswith("urllib."):
        print(f"NETWORK ATTEMPT: {event}", file=sys.stderr)
        raise OSError(f"network access blocked ({event})")

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "torchvision", "timm"}:
            raise ImportError(f"{name} is not installed here")

sys.addaudithook(no_network)
sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def sandboxed(*command: str | Path) -> subprocess.CompletedProcess:
    """Run a script under SANDBOX, from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", SANDBOX, *map(str, command)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_sandbox_blocks(tmp_path: Path) -> None:
    """Positive control: the sandbox does stop a connection and an import of torch."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import socket, contextlib\n"
        "with contextlib.suppress(OSError):\n"
        "    socket.create_connection(('127.0.0.1', 9))\n"
        "import torch\n"
    )
    result = sandboxed(script)
    assert "NETWORK ATTEMPT: socket." in result.stderr
    assert "ImportError: torch is not installed here" in result.stderr


def test_scoring_needs_no_network_and_no_backbone(sample_model: Path, sample_dataset: Path) -> None:
    """Every socket (and urllib) operation raises, and torch and timm cannot be imported:
    the model carries its feature graph, so scoring still gives the very same output."""
    images = [str(p) for p in sorted((sample_dataset / "test").rglob("*.png"))[:3]]
    command = ["anomaly_detector.py", "--model", str(sample_model), *images]
    normal = run_script(*command)
    result = sandboxed(*command)
    assert result.returncode == exit_codes.OK, result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr
    assert result.stdout == normal.stdout

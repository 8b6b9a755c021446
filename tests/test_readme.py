"""The README's shell examples run as copied, in the order written, after `make demo`:
in a folder holding the two scripts and what `make demo` leaves in out/demo/."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPTS = ("anomaly_detector.py", "make_model.py")


def examples() -> list[str]:
    """The README's ```sh blocks, after the first (`make demo`, which the fixture stands for)."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", (ROOT / "README.md").read_text(), re.S | re.M)
    assert blocks[0].startswith("make demo")
    return blocks[1:]


@pytest.fixture
def after_demo(sample_dataset: Path, sample_model: Path, tmp_path: Path) -> Path:
    """A clone after `make demo`: the scripts, the sample data and a model of it in out/demo."""
    for script in SCRIPTS:
        (tmp_path / script).symlink_to(ROOT / script)
    demo = tmp_path / "out" / "demo"
    shutil.copytree(sample_dataset, demo / "data" / "metal_nut_sample")
    shutil.copy(sample_model, demo / "model.safetensors")
    return tmp_path


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`python3` on PATH is this venv's, as it is for the shebang lines after `make demo`;
    the resident scorer an example starts has a runtime folder of its own, and is stopped."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    yield {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(runtime)}
    for lock in runtime.glob("ind_knn_ad/scorer-*.lock"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


@pytest.mark.slow
def test_every_readme_example_runs_as_copied(after_demo: Path, environment: dict) -> None:
    outputs = []
    for block in examples():
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block],
            cwd=after_demo,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        outputs.append(result.stdout)
    fits, scores = outputs[0], outputs[1]
    assert fits.count("Model file creation is complete.") == 3
    records = [line for line in scores.splitlines() if line.startswith("out/demo/data/")]
    assert records and all(re.fullmatch(r".*\.png,\d+\.\d{6},[01]", line) for line in records)
    assert "threshold: " in scores  # --info
    assert (after_demo / "models" / "padim.safetensors").is_file()
    colour = (after_demo / "out" / "demo" / "data").glob("*/test/color/*.png")
    maps = {f"{path.relative_to(after_demo)}.png" for path in colour}
    heatmaps = after_demo / "out" / "heatmaps"
    assert maps and {str(p.relative_to(heatmaps)) for p in heatmaps.rglob("*.png")} == maps
    assert 'id="flagged"' in (after_demo / "out" / "run.html").read_text()  # --report

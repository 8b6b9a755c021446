"""Golden model files: files written by an earlier version still load and score the same.

`tests/golden/` holds model files of every method and format variant, written once by the
commit named in tests/golden/README.md, with the exact output `anomaly_detector.py` gave for
them then. A difference here is a break of the model-file format or of scoring, not a
reason to regenerate the files. Only the command line is used, never the package's modules,
so that moving modules around cannot change what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ARITHMETIC, ROOT, run_script

GOLDEN = "tests/golden"
# Every golden model file, by stem: tests/golden/<stem>.safetensors, expected/<stem>.csv.
MODELS = [
    "patchcore_max",  # format version 1, fixed threshold (as given by --threshold)
    "patchcore_top10",
    "patchcore_reweighted",
    "padim",
    "spade",
    "patchcore_aligned",  # format version 2: preprocess.align
    "patchcore_no_digests",  # without the SHA-256 records, as files were before them
]
# The images, as given on the command line when the expected output was made.
IMAGES = [
    f"{GOLDEN}/images/{name}.png"
    for name in (
        "train/good_0",
        "train/good_1",
        "train/good_2",
        "train/good_3",
        "test/good_0",
        "test/good_1",
        "test/good_2",
        "test/blob",
        "test/scratch",
        "test/crack",
    )
]


def expected(stem: str) -> bytes:
    return (ROOT / GOLDEN / "expected" / f"{stem}.csv").read_bytes()


def score(stem: str) -> subprocess.CompletedProcess:
    return run_script(
        "anomaly_detector.py", "--model", f"{GOLDEN}/{stem}.safetensors", *IMAGES, check=False
    )


@pytest.mark.parametrize("stem", MODELS)
def test_golden_model_scores_as_when_written(stem: str) -> None:
    result = score(stem)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == expected(stem)


@pytest.mark.parametrize("arithmetic", sorted(ARITHMETIC))
@pytest.mark.parametrize("stem", MODELS)
def test_golden_model_scores_the_same_with_other_cpu_kernels(
    stem: str, arithmetic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ARITHMETIC[arithmetic].items():
        monkeypatch.setenv(name, value)
    result = score(stem)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == expected(stem)


def test_golden_output_bytes_are_exact() -> None:
    """run_script reads text, which folds CR LF into LF: here the raw bytes, line ends
    included."""
    model = f"{GOLDEN}/patchcore_max.safetensors"
    result = subprocess.run(
        [sys.executable, "anomaly_detector.py", "--model", model, *IMAGES],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected("patchcore_max")


def test_golden_expected_output_has_both_flags() -> None:
    """Each expected file scores every image, with good (0) and defective (1) flags."""
    for stem in MODELS:
        lines = expected(stem).decode().splitlines()
        assert [line.rsplit(",", 2)[0] for line in lines] == IMAGES, stem
        assert {line.rsplit(",", 1)[1] for line in lines} == {"0", "1"}, stem

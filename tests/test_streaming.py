"""`anomaly_detector.py -` scores names read from stdin, each line printed as soon as its
image is scored; `--info` says what a model is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT
from safetensors import safe_open
from test_golden import GOLDEN, MODELS, expected, write_images

SCRIPT = ROOT / "anomaly_detector.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def scorer(*args: str | Path, stdin: bytes = b"", cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, SCRIPT, *map(str, args)]
    return subprocess.run(command, input=stdin, cwd=cwd, capture_output=True, env=ENV, check=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("golden")
    return folder, write_images(folder)


@pytest.mark.parametrize("stem", ["patchcore_top10", "padim", "patchcore_aligned"])
@pytest.mark.parametrize("separator", [b"\n", b"\0"])
def test_names_from_stdin_print_what_the_command_line_prints(
    stem: str, separator: bytes, images: tuple[Path, list[str]]
) -> None:
    folder, names = images
    flags = ["-0"] if separator == b"\0" else []
    stdin = separator.join(name.encode() for name in names) + separator
    result = scorer("--model", GOLDEN / f"{stem}.safetensors", *flags, "-", stdin=stdin, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(stem)


def test_nul_separated_names_may_hold_newlines(
    images: tuple[Path, list[str]], tmp_path: Path
) -> None:
    folder, names = images
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes((folder / names[0]).read_bytes())
    model = GOLDEN / "spade.safetensors"
    from_argv = scorer("--model", model, odd)
    from_stdin = scorer("--model", model, "-0", "-", stdin=os.fsencode(odd) + b"\0")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_argv.stdout
    assert from_stdin.stdout.startswith(b'"')  # quoted, as RFC 4180 wants


def test_a_bad_name_costs_its_own_line(images: tuple[Path, list[str]]) -> None:
    folder, names = images
    stdin = f"{names[0]}\nmissing.png\n\n{names[1]}\n".encode()
    result = scorer("--model", GOLDEN / "padim.safetensors", "-", stdin=stdin, cwd=folder)
    assert result.returncode == 1
    assert result.stdout == b"".join(expected("padim").splitlines(keepends=True)[:2])
    assert result.stderr.decode().splitlines() == ["ERROR: missing.png: no such file"]


def test_each_line_comes_before_the_next_name_is_read(images: tuple[Path, list[str]]) -> None:
    """As with `inotifywait -m`: the next name comes only once the line for this one is out."""
    folder, names = images
    command = [sys.executable, SCRIPT, "--model", GOLDEN / "patchcore_max.safetensors", "-"]
    process = subprocess.Popen(
        command, cwd=folder, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    watchdog = threading.Timer(120, process.kill)  # a line held back would hang the test
    watchdog.start()
    lines = []
    try:
        for name in names[:3]:
            process.stdin.write(f"{name}\n".encode())
            process.stdin.flush()
            lines.append(process.stdout.readline())
        process.stdin.close()
        assert process.wait() == 0
    finally:
        watchdog.cancel()
    assert b"".join(lines) == b"".join(expected("patchcore_max").splitlines(keepends=True)[:3])


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["-", "a.png"], "- (names from stdin) goes alone; a file named - is ./-"),
        (["-0", "a.png"], "-0 (--null) is for names read from stdin (-)"),
        ([], "the following arguments are required: imagefile"),
        (["--info", "a.png"], "--info takes no image files"),
    ],
)
def test_inputs_that_cannot_go_together(args: list[str], problem: str) -> None:
    result = scorer("--model", GOLDEN / "padim.safetensors", *args)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == f"anomaly_detector.py: error: {problem}"


@pytest.mark.parametrize("stem", MODELS)
def test_info_says_what_the_model_is(stem: str) -> None:
    model = GOLDEN / f"{stem}.safetensors"
    result = scorer("--model", model, "--info")
    assert result.returncode == 0, result.stderr
    facts = dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())
    with safe_open(str(model), framework="numpy") as reader:
        settings = json.loads(reader.metadata()["ind_knn_ad"])
    assert facts["model"].startswith(str(model))
    assert facts["method"].startswith(settings["method"])
    assert facts["backbone"].startswith(settings["backbone"])
    assert float(facts["threshold"]) == pytest.approx(settings["threshold"]["value"], rel=1e-5)
    assert settings["threshold"]["rule"] in facts["fit"]
    assert facts["training set"] == f"{settings['dataset']}, {settings['train_images']} good images"
    assert ("aligned" in facts["input"]) == ("align" in settings["preprocess"])


def test_info_on_a_fitted_model_gives_the_false_alarm_bound(sample_model: Path) -> None:
    result = scorer("--model", sample_model, "--info")
    assert result.returncode == 0, result.stderr
    assert "Expected false alarms on good images: at most" in result.stdout.decode()


def test_info_on_a_missing_model_is_a_model_error(tmp_path: Path) -> None:
    result = scorer("--model", tmp_path / "none.safetensors", "--info")
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1

"""Faults while saving and reading models: nothing is lost and nothing torn is ever read.

- Ctrl-C or SIGTERM during a real make_model.py fit leaves the earlier model as it was.
- A write that fails (full disk) or is interrupted leaves the old file and no temporary.
- Readers running while the model is replaced, 8 at a time through xargs, each score with
  the whole old model or the whole new one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.io.atomic import atomic_write
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.model_file.store import load_model, save_model


def listing(folder: Path) -> dict[str, str]:
    """Every entry in `folder`, hidden ones included, with the digest of its content."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


# --- interrupting make_model.py ------------------------------------------------------------


def _ctrl_c_reaches_it() -> None:
    """In the child: SIGINT as at a terminal. A shell that runs the tests in the background
    without job control makes them ignore SIGINT, and Python then leaves it ignored (as a
    background job should); this test is about a fit that Ctrl-C does reach."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_fit(sample_dataset: Path, folder: Path, signum: int, delay: float):
    """Start a fit that would replace folder/model.safetensors, signal it `delay` seconds
    after it reports its backbone (the fit is under way then), and return the process."""
    process = subprocess.Popen(
        [
            *(sys.executable, "make_model.py", "--data-dir", sample_dataset, "--device", "cpu"),
            *("--backbone", "efficientnet_lite0", "--model", folder / "model.safetensors"),
            "--force",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_ctrl_c_reaches_it,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("Backbone"):
            break
    time.sleep(delay)
    process.send_signal(signum)
    return process, seen


@pytest.mark.parametrize(
    ("signum", "delay"),
    [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.5)],
    ids=["ctrl-c", "sigterm"],
)
def test_interrupted_fit_keeps_the_old_model(
    sample_model: Path, sample_dataset: Path, tmp_path: Path, signum: int, delay: float
) -> None:
    shutil.copy(sample_model, tmp_path / "model.safetensors")
    before = listing(tmp_path)
    process, seen = _interrupt_fit(sample_dataset, tmp_path, signum, delay)
    stderr = "".join(seen) + process.stderr.read()
    assert process.wait(timeout=120) == exit_codes.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("interrupted: no partial file was left behind")
    assert listing(tmp_path) == before  # same bytes, and no partial file beside them


def test_interrupted_scorer(sample_model: Path, sample_dataset: Path, tmp_path: Path) -> None:
    """SIGTERM while scoring: exit 130 with one line, and only whole records on stdout.
    Long names make the output outgrow the pipe, so the tool is still busy when signalled."""
    long_name = tmp_path / ("g" * 240 + ".png")
    shutil.copy(sample_dataset / "test" / "good" / "000.png", long_name)
    process = subprocess.Popen(
        [sys.executable, ROOT / "anomaly_detector.py", "--model", sample_model] + [long_name] * 500,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    first = process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_codes.INTERRUPTED
    assert stderr.decode() == "interrupted\n"
    lines = (first + stdout).decode().splitlines()
    assert 0 < len(lines) < 500
    assert all(line.startswith(f"{long_name},") and line.count(",") == 2 for line in lines)


# --- failed and interrupted writes ---------------------------------------------------------


class _FailingStream:
    """Stands in for `open(path, "xb")`: writes half of what it is given, then fails like a
    full disk (or raises KeyboardInterrupt, like Ctrl-C in the middle of the write)."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.error = error

    def __enter__(self) -> _FailingStream:
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self.descriptor)

    def write(self, data: bytes) -> int:
        os.write(self.descriptor, data[: len(data) // 2])
        raise self.error


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
    ids=["disk-full", "interrupted"],
)
def test_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old model")
    import ind_knn_ad.io.atomic as atomic

    monkeypatch.setattr(
        atomic,
        "open",
        lambda path, _mode: _FailingStream(path, error),
        raising=False,
    )
    with pytest.raises(type(error)):
        atomic_write(target, b"new model" * 1000)
    assert listing(tmp_path) == {"model.safetensors": hashlib.sha256(b"old model").hexdigest()}


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_after_writing_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old model")

    def fail(*_args) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(target, b"new model")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert target.read_bytes() == b"old model"


def test_new_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    """Not the 0600 of a temporary file: a model is meant to be passed around."""
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "model.safetensors", b"data")
    finally:
        os.umask(mask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        import socket

        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # another /dev/null
        except PermissionError:
            pytest.skip("making a device node needs root")


@pytest.mark.parametrize("kind", ["device", "fifo", "socket"])
def test_a_special_file_is_never_replaced(tmp_path: Path, kind: str) -> None:
    """Issue 13, item 4: `--model /dev/full` as root turned the device into a file."""
    target = tmp_path / "model.safetensors"
    _special(kind, target)
    before = os.stat(target)
    with pytest.raises(OSError, match="not a regular file: refusing to replace it"):
        atomic_write(target, b"new model")
    after = os.stat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino,
        before.st_mode,
        before.st_rdev,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("length", [200, 233, 234, 250, 255])
def test_names_up_to_the_limit_are_written(tmp_path: Path, length: int) -> None:
    """Issue 13, item 5: the temporary name fits whenever the final name does."""
    target = tmp_path / ("m" * (length - 4) + ".png")
    atomic_write(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize("receiver", ["process", "another thread"])
def test_model_results_and_sheet_are_replaced_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: str
) -> None:
    """Issue 13, item 3: Ctrl-C right after the model's rename used to leave a new model
    beside old results. A real SIGINT sent during the first rename is held back until all
    three are renamed: the three files are all new, and the interrupt still arrives. The
    kernel may hand a process's signal to any of its threads (a fit runs thread pools),
    so it is also sent to another thread."""
    import threading

    import ind_knn_ad.io.atomic as atomic

    names = ["model.safetensors", "model.results.json", "model.contact_sheet.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"old " + name.encode())
    real_replace = os.replace
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()

    def replace_then_interrupt(source, target) -> None:
        real_replace(source, target)
        if Path(target).name == names[0]:
            if receiver == "process":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                signal.pthread_kill(other.ident, signal.SIGINT)
            time.sleep(0.05)  # time for the signal to be taken, wherever it lands

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic.write_together([(tmp_path / n, b"new " + n.encode()) for n in names])
    finally:
        signal.signal(signal.SIGINT, previous)
        done.set()
        other.join()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        name: b"new " + name.encode() for name in names
    }


def test_interrupt_before_the_renames_keeps_every_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt while the third file is being written: all three old files stay, and
    no temporary file is left."""
    names = ["model.safetensors", "model.results.json", "model.contact_sheet.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"old")
    import ind_knn_ad.io.atomic as atomic

    real_open = open
    opened = []

    def failing_open(path, mode):
        opened.append(path)
        if len(opened) == 3:
            return _FailingStream(path, KeyboardInterrupt())
        return real_open(path, mode)

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_together([(tmp_path / n, b"new") for n in names])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {n: b"old" for n in names}


def test_results_name_their_model_by_sha256(sample_model: Path) -> None:
    """The results file, contact sheet and report beside a model say which model they
    belong to."""
    import json

    from PIL import Image

    digest = hashlib.sha256(sample_model.read_bytes()).hexdigest()
    results = json.loads(sample_model.with_suffix(".results.json").read_text())
    assert results["model_sha256"] == digest
    with Image.open(sample_model.with_suffix(".contact_sheet.png")) as sheet:
        assert sheet.text["model_sha256"] == digest
    assert f"Model SHA-256 {digest}" in sample_model.with_suffix(".report.html").read_text()


FULL_DISK_SCRIPT = """
import sys
from pathlib import Path
from ind_knn_ad.model_file.store import load_model, save_model
try:
    save_model(load_model(Path(sys.argv[1])), Path(sys.argv[2]))
except OSError as error:
    print(error)
"""


def test_real_full_disk_keeps_the_old_model(sample_model: Path, tmp_path: Path) -> None:
    """save_model onto a small tmpfs that holds the old model but not a second copy.
    Needs a private mount namespace (root or user namespaces); skipped without one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sample_model.stat().st_size
    command = (
        f"mount -t tmpfs -o size={size * 3 // 2} tmpfs {disk} && cp {sample_model} {disk}/m && "
        f"{sys.executable} -c '{FULL_DISK_SCRIPT}' {disk}/m {disk}/m && "
        f"sha256sum {disk}/m && ls -A {disk}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if "mount" in result.stderr or "unshare" in result.stderr:
        pytest.skip(f"no private tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    message, digest, names = result.stdout.splitlines()
    assert message == "[Errno 28] No space left on device"
    assert digest.split()[0] == hashlib.sha256(sample_model.read_bytes()).hexdigest()
    assert names == "m"


# --- concurrent readers while the model is replaced ----------------------------------------


def _other_model(sample_model: Path, target: Path) -> None:
    """A second, different model from the first without a second fit: every other bank
    row, each moved by 0.25, and a new threshold. Every image scores differently against
    it (with the rows alone, a defective image's nearest rows could all be kept)."""
    model = load_model(sample_model)
    settings = {**model.settings, "threshold": {**model.settings["threshold"], "value": 1.0}}
    bank = np.ascontiguousarray(model.tensors["memory_bank"][::2] + np.float32(0.25))
    save_model(Model(settings, model.feature_graph, {"memory_bank": bank}), target)


def test_readers_never_see_a_torn_model(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """16 scorer processes, 8 at a time through xargs, while a writer keeps replacing the
    model with atomic_write (what make_model.py's save does) as fast as it can."""
    old, new, live = tmp_path / "old", tmp_path / "new", tmp_path / "live.safetensors"
    shutil.copy(sample_model, old)
    _other_model(sample_model, new)
    images = [str(p) for p in sorted((sample_dataset / "test").rglob("*.png"))[:2]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def score(model: Path) -> str:
        command = [sys.executable, ROOT / "anomaly_detector.py", "--model", model, *images]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout

    expected = {score(old): "old", score(new): "new"}
    assert len(expected) == 2
    versions = [old.read_bytes(), new.read_bytes()]
    atomic_write(live, versions[0])
    stop, replaced = threading.Event(), [0]

    def keep_replacing() -> None:
        while not stop.is_set():
            replaced[0] += 1
            atomic_write(live, versions[replaced[0] % 2])

    writer = threading.Thread(target=keep_replacing)
    writer.start()
    out = tmp_path / "out"
    out.mkdir()
    reader = (
        f"{sys.executable} {ROOT / 'anomaly_detector.py'} --model {live} {' '.join(images)} "
        f'> {out}/"$0".csv 2> {out}/"$0".err'
    )
    try:
        subprocess.run(
            ["xargs", "-P", "8", "-n", "1", "sh", "-c", reader],
            input="\n".join(map(str, range(16))),
            text=True,
            env=env,
        )
    finally:
        stop.set()
        writer.join()
    seen = []
    for run in range(16):
        assert (out / f"{run}.err").read_text() == ""
        seen.append(expected[(out / f"{run}.csv").read_text()])  # KeyError: torn or mixed
    assert replaced[0] >= 4, "the model was hardly replaced while the readers ran"
    assert set(seen) == {"old", "new"}, seen

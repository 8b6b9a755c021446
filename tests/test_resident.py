"""`--resident` (or ANOMALY_DETECTOR_RESIDENT=1): the call hands its arguments to a scorer
process that keeps the model loaded, and prints exactly what a plain call prints."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from conftest import ROOT
from test_golden import GOLDEN, expected, write_images

from ind_knn_ad.cli import commands, exit_codes, resident

SCRIPT = ROOT / "anomaly_detector.py"


class Calls:
    """Calls of the scorer script in one private runtime folder; the resident scorer they
    start is stopped at the end (its pid is in its lock file)."""

    def __init__(self, runtime: Path, cwd: Path) -> None:
        self.folder = runtime / "ind_knn_ad"
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(runtime)}):
            self.socket, self.lock = map(Path, resident.scorer_files())  # this code's scorer
        self.cwd = cwd
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "XDG_RUNTIME_DIR": str(runtime),
            "ANOMALY_DETECTOR_IDLE_SECONDS": "120",
        }

    def run(self, *args: str | Path, resident: bool = True, **env: str) -> tuple:
        environment = {**self.env, "ANOMALY_DETECTOR_RESIDENT": "1" if resident else "0", **env}
        command = [sys.executable, SCRIPT, *map(str, args)]
        result = subprocess.run(command, cwd=self.cwd, env=environment, capture_output=True)
        return result.returncode, result.stdout, result.stderr

    def scorer_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.lock.read_text())
        return None

    def stop(self) -> None:
        pid = self.scorer_pid()
        if pid is not None and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def calls(tmp_path: Path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    names = write_images(tmp_path)
    made = Calls(runtime, tmp_path)
    made.names = names
    yield made
    made.stop()


CASES = [  # model, more arguments, the exit code
    ("padim", [], 0),
    ("patchcore_aligned", ["missing.png"], 1),  # its own stderr line
    ("spade", ["--format", "jsonl", "--threshold", "2"], 0),
    ("patchcore_top10", ["--info"], 0),
    ("patchcore_max", ["--bad-option"], 2),  # argparse's usage lines
    ("nonexistent", [], 3),
]


def untimed(result: tuple) -> tuple:
    """A call's result less the JSON lines' `seconds`, the one field that differs."""
    code, out, err = result
    return code, re.sub(rb'"seconds": [0-9.e-]+', b"", out), err


@pytest.mark.parametrize(("stem", "extra", "code"), CASES)
def test_a_resident_call_prints_a_plain_calls_bytes(
    calls: Calls, stem: str, extra: list, code: int
) -> None:
    model = GOLDEN / f"{stem}.safetensors"
    images = [] if "--info" in extra else calls.names[:4]
    args = ["--model", model, *extra, *images]
    plain = untimed(calls.run(*args, resident=False))
    assert plain[0] == code
    assert untimed(calls.run(*args)) == plain
    assert untimed(calls.run(*args)) == plain  # the model kept, the same again
    assert calls.scorer_pid() is not None  # it was the resident scorer that answered


def test_the_socket_is_private(calls: Calls) -> None:
    calls.run("--model", GOLDEN / "padim.safetensors", calls.names[0])
    assert calls.folder.stat().st_mode & 0o777 == 0o700
    assert calls.socket.stat().st_mode & 0o777 == 0o600


def test_a_model_replaced_mid_loop_scores_as_the_new_one(calls: Calls, tmp_path: Path) -> None:
    live = tmp_path / "live.safetensors"
    shutil.copy(GOLDEN / "patchcore_top10.safetensors", live)
    args = ["--model", live, *calls.names]
    assert calls.run(*args)[1] == expected("patchcore_top10")
    replacement = tmp_path / "next.safetensors"
    shutil.copy(GOLDEN / "patchcore_reweighted.safetensors", replacement)
    os.replace(replacement, live)  # as make_model.py writes a model: a new inode
    assert calls.run(*args)[1] == expected("patchcore_reweighted")
    live.write_bytes((GOLDEN / "patchcore_max.safetensors").read_bytes())  # in place
    assert calls.run(*args)[1] == expected("patchcore_max")


def test_a_stale_socket_is_replaced(calls: Calls) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(calls.socket))
    stale.close()  # the file stays, and nothing listens: as after a scorer was killed
    result = calls.run("--model", GOLDEN / "padim.safetensors", *calls.names)
    assert result == (0, expected("padim"), b"")
    assert calls.scorer_pid() is not None


def _request(calls: Calls, argv: list[str]) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(calls.socket))
    connection.sendall(resident.request(argv, str(calls.cwd), "anomaly_detector.py"))
    connection.shutdown(socket.SHUT_WR)
    return connection


def test_a_client_gone_mid_request_costs_only_itself(calls: Calls) -> None:
    model = GOLDEN / "spade.safetensors"
    assert calls.run("--model", model, calls.names[0])[0] == 0  # the scorer is up
    for _ in range(3):  # each goes away before its answer
        _request(calls, ["--model", str(model), *calls.names * 20]).close()
    assert calls.run("--model", model, *calls.names) == (0, expected("spade"), b"")


def test_a_peer_of_another_uid_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer asks the kernel who connected (SO_PEERCRED) and answers its own uid only;
    here the scorer takes itself for another uid. (Others cannot reach the socket anyway:
    0600 in a 0700 folder.)"""
    scorer_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    assert resident.peer_uid(scorer_end) == os.getuid()
    client_end.sendall(resident.request(["--info"], "/", "anomaly_detector.py"))
    client_end.shutdown(socket.SHUT_WR)
    answered = []
    monkeypatch.setattr(resident.os, "getuid", lambda: os.geteuid() + 1)
    resident._serve(scorer_end, None, lambda *request: answered.append(request))
    scorer_end.close()
    assert answered == []
    try:
        reply = client_end.recv(100)
    except ConnectionResetError:  # closed with the request unread
        reply = b""
    assert reply == b""  # no answer: the call scores itself


def test_without_a_working_scorer_the_call_scores_itself(calls: Calls, tmp_path: Path) -> None:
    """A socket folder others may write to is not used: the call scores in-process."""
    shared = tmp_path / "shared"
    (shared / "ind_knn_ad").mkdir(parents=True)
    (shared / "ind_knn_ad").chmod(0o777)
    args = ["--model", GOLDEN / "patchcore_max.safetensors", *calls.names, "missing.png"]
    plain = calls.run(*args, resident=False)
    assert calls.run(*args, XDG_RUNTIME_DIR=str(shared)) == plain
    assert plain[0] == 1
    assert list((shared / "ind_knn_ad").iterdir()) == []


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_the_scorer_exits_when_idle(calls: Calls) -> None:
    model = GOLDEN / "padim.safetensors"
    calls.run("--model", model, calls.names[0], ANOMALY_DETECTOR_IDLE_SECONDS="1")
    pid = calls.scorer_pid()
    assert pid is not None
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    assert not calls.socket.exists()


def test_the_calls_exit_codes_are_the_tables() -> None:
    assert (commands.USAGE, resident.WRITE_ERROR) == (exit_codes.USAGE, exit_codes.WRITE_ERROR)

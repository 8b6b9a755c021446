"""The resident scorer's side of a call (cli/resident.py): the models it keeps, checked
against their files before each call, and one call run as `cli.score.main` with its own
stdout, stderr and working folder, so its bytes and exit code are a plain call's."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from ind_knn_ad.cli import score
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.runtime.detector import Detector

KEPT_MODELS = 4  # the most recently used; a loop scores with one


class Resident(score.Models):
    """Models and detectors kept between calls, by the model file's absolute path; a
    file whose device, inode, size or times changed (an atomic replace makes a new inode)
    is loaded again, so a model replaced mid-loop never scores with the old one."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[tuple[int, ...], Model]] = {}
        self._detectors: dict[tuple[int, str, bool], tuple[Model, Detector]] = {}

    def model(self, path: Path) -> Model:
        key = os.path.abspath(path)
        try:
            info = os.stat(path)
        except OSError:
            return super().model(path)  # the loader words what is wrong
        stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        kept = self._models.pop(key, None)
        if kept is None or kept[0] != stamp:
            kept = (stamp, super().model(path))  # stamped before reading: never too new
        self._models[key] = kept
        for old in list(self._models)[:-KEPT_MODELS]:
            del self._models[old]
        return kept[1]

    def detector(self, model: Model, device: str, maps: bool) -> Detector:
        key = (id(model), device, maps)
        kept = self._detectors.get(key)
        if kept is None or kept[0] is not model:  # the model kept with it: ids are reused
            kept = (model, super().detector(model, device, maps))
        live = {id(each) for _, each in self._models.values()}
        self._detectors = {k: v for k, v in self._detectors.items() if k[0] in live}
        self._detectors[key] = kept
        return kept[1]


def _capture() -> tuple[io.BytesIO, io.TextIOWrapper]:
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=True)


def answer(argv: list[str], cwd: str, prog: str, models: Resident) -> tuple[int, bytes, bytes]:
    """Run one call as `prog argv` from `cwd`: its exit code, stdout and stderr bytes."""
    (out, stdout), (err, stderr) = _capture(), _capture()
    stderr.reconfigure(errors="backslashreplace")  # as Python's own stderr
    os.chdir(cwd)
    sys.argv = [prog, *argv]  # argparse names the command from it
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = score.main(argv, models)
        except SystemExit as exit:  # argparse: --help, usage errors
            code = exit.code if isinstance(exit.code, int) else 0
    return code, out.getvalue(), err.getvalue()

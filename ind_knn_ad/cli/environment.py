"""Run the tools in the project's environment even when started with another Python.

The README runs `./anomaly_detector.py IMAGE`, whose `#!/usr/bin/env python3` finds
whichever Python is first on PATH, usually one without NumPy or ONNX Runtime. Both scripts
import this module before anything else of ours that needs them; importing it checks: if
they are missing and the venv that `make demo` creates is there, the script is run again
with its Python and the same arguments; if there is no such venv, one line says what to
do (exit code 2). Standard library only, so that it runs before anything else can fail,
and only what Python's start has loaded already: every call pays for this module's imports,
a resident one most of all (bench/resident.py).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
WINDOWS = os.name == "nt"


def venv_python(root: str, windows: bool = WINDOWS) -> str:
    """The Python of the venv `make venv` creates in `root`, where Windows puts it too."""
    return os.path.join(
        root, ".venv", *(("Scripts", "python.exe") if windows else ("bin", "python"))
    )


VENV_PYTHON = venv_python(ROOT)
_RESTARTED = "IND_KNN_AD_RESTARTED"  # set for the second run, so it never loops
REQUIRED = ("numpy", "PIL", "onnxruntime", "safetensors")


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """Those of `names` (top-level) this Python cannot import, found without importing
    them: by asking the import system's finders, as `importlib.util.find_spec` does."""
    return [name for name in names if not _findable(name)]


def _findable(name: str) -> bool:
    if name in sys.modules:  # None there: blocked, as find_spec has it
        return sys.modules[name] is not None
    finders = (getattr(finder, "find_spec", None) for finder in sys.meta_path)
    return any(find(name, None) is not None for find in finders if find is not None)


def use_project_environment(script: str, required: tuple[str, ...] = REQUIRED) -> None:
    """Return if `required` imports here; else re-execute `script` with the venv's Python,
    or exit with code 2 and one line naming what is missing."""
    missing = missing_modules(required)
    if not missing:
        return
    if os.path.isfile(VENV_PYTHON) and not os.environ.get(_RESTARTED):
        os.environ[_RESTARTED] = "1"
        command = [str(VENV_PYTHON), script, *sys.argv[1:]]
        if WINDOWS:  # execv starts a new process there: the shell would not wait for it
            import subprocess

            sys.exit(subprocess.call(command))
        os.execv(VENV_PYTHON, command)
    name = os.path.basename(script)
    print(
        f"{name}: this Python ({sys.executable}) lacks {', '.join(missing)}; run `make demo` "
        f"(or `make venv`) first, or run it as {os.path.relpath(VENV_PYTHON, ROOT)} {name}",
        file=sys.stderr,
    )
    sys.exit(2)


use_project_environment(sys.argv[0])

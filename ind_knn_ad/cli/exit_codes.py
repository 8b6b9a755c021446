"""Exit codes shared by both command-line tools (documented in the README), the one table
that maps errors to them, and the wrapper both tools run in.

Every non-zero code comes with a message on stderr, one line per problem naming the file
(argparse adds its usage lines for code 2), never a traceback. With code 1, stdout holds a
record for every image that could be read, and each one that could not has its own line.
Standard library only: scoring imports this and must stay light.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from ind_knn_ad import errors

OK = 0
SOME_INPUTS_FAILED = 1  # anomaly_detector.py: at least one image could not be scored
# bad command line (argparse's own code); an option this backbone, dataset or machine cannot
# take, checked before the fit (--layers, --coreset, a size beyond memory); --device cuda
# without CUDA; the scripts run by a Python that lacks their dependencies, with no venv
USAGE = 2
# model file missing, unreadable, invalid, damaged (fails its SHA-256), from a newer
# version, too large for this machine's memory, or won't run
MODEL_ERROR = 3
# make_model.py: dataset missing, cannot be downloaded, or unusable (fewer than 2 training
# images, an unreadable image, a fit that fails on these images)
DATA_ERROR = 4
BACKBONE_ERROR = 5  # make_model.py: pretrained weights unavailable, or a bad --weights file
# the model, results file, contact sheet, a heatmap or stdout could not be written (full
# disk, unwritable folder, a device, FIFO or socket where the file goes, closed pipe)
WRITE_ERROR = 6
INTERRUPTED = 130  # Ctrl-C or SIGTERM; any earlier model file is left as it was


class UsageError(ValueError):
    """An option that cannot work with this backbone, dataset or machine (exit code 2)."""


# The errors a tool reports as one line and its exit code, matched along the class's MRO
# (a subclass takes its base's code). Any other exception is a bug and keeps its traceback.
EXIT_CODES: dict[type[BaseException], int] = {
    UsageError: USAGE,
    errors.ConfigError: USAGE,
    errors.ModelFileError: MODEL_ERROR,
    errors.DatasetError: DATA_ERROR,
    errors.DownloadError: DATA_ERROR,
    errors.ImageError: DATA_ERROR,
    errors.BackboneError: BACKBONE_ERROR,
    errors.WriteError: WRITE_ERROR,
}


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error in the table, or None."""
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return None


def print_error(message: str) -> None:
    """One plain line on stderr (never wrapped), as shell users and log parsers expect."""
    print(f"error: {message}", file=sys.stderr)


def run_cli(main: Callable[[], int], report: Callable[[str], None], interrupted: str) -> int:
    """Run a tool's `main`: an error in the table becomes its message, passed to `report`
    (each tool prints its own kind of line), and its exit code; Ctrl-C or SIGTERM prints
    `interrupted` and gives INTERRUPTED.

    SIGTERM unwinds like Ctrl-C, so that atomic writes clean up their temporary files.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        report(str(error))
        return code

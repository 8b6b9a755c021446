"""Exit codes shared by both command-line tools (documented in the README), the one table
that maps errors to them, and the wrapper both tools run in.

Every non-zero code comes with a message on stderr, one line per problem naming the file
or option (argparse adds its usage lines for code 2), never a traceback (but with debug
logging, for an internal error). With code 1, stdout holds a record for every image that
could be read, and each one that could not has its own line. The library's errors speak of
settings; `message` words them as the options that set them. Standard library only:
scoring imports this and must stay light.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from collections.abc import Callable

from ind_knn_ad import errors

OK = 0
SOME_INPUTS_FAILED = 1  # anomaly_detector.py: at least one image could not be scored
# bad command line (argparse's own code); an option this backbone, dataset or machine cannot
# take, checked before the fit (--layers, --coreset, a size beyond memory), or settings the
# library refuses (ConfigError); --device cuda without CUDA; the scripts run by a Python
# that lacks their dependencies, with no venv
USAGE = 2
# model file missing, unreadable, invalid, damaged (fails its SHA-256), from a newer
# version, too large for this machine's memory, or won't run
MODEL_ERROR = 3
# make_model.py: dataset missing, cannot be downloaded, or unusable (fewer than 2 training
# images, an unreadable image, a fit that fails on these images: a DatasetError raised in
# it, never any ValueError)
DATA_ERROR = 4
BACKBONE_ERROR = 5  # make_model.py: pretrained weights unavailable, or a bad --weights file
# the model, results file, contact sheet, a heatmap or stdout could not be written (full
# disk, unwritable folder, a device, FIFO or socket where the file goes, closed pipe)
WRITE_ERROR = 6
# an error the library does not expect: a bug, not the user's doing (EX_SOFTWARE of
# sysexits.h); one line naming the exception, its traceback only with debug logging
INTERNAL_ERROR = 70
INTERRUPTED = 130  # Ctrl-C or SIGTERM; any earlier model file is left as it was


class UsageError(ValueError):
    """An option that cannot work with this backbone, dataset or machine (exit code 2)."""


# The errors a tool reports as one line and its exit code, matched along the class's MRO
# (a subclass takes its base's code). Any other exception is a bug (INTERNAL_ERROR).
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


# The option that sets each of the library's settings (`ConfigError.setting`).
FLAGS = {
    "augment": "--augment",
    "backbone": "--backbone",
    "border": "--border",
    "coreset": "--coreset",
    "crop": "--crop",
    "device": "--device",
    "image_score": "--image-score",
    "layers": "--layers",
    "method": "--method",
    "operating_point": "--operating-point",
    "resize": "--image-size",
    "seed": "--seed",
    "threshold": "--threshold",
}


def message(error: BaseException) -> str:
    """What the user reads of an error in the table: a ConfigError's message in the terms
    of the option that sets its setting (a leading "image score" reads "--image-score";
    any other message gets the option as a prefix), every other message as it is."""
    text = str(error)
    if not isinstance(error, errors.ConfigError) or error.setting not in FLAGS:
        return text
    flag, name = FLAGS[error.setting], error.setting.replace("_", " ")
    return flag + text[len(name) :] if text.startswith(f"{name} ") else f"{flag}: {text}"


def internal_error(error: BaseException) -> str:
    """The one line for an exception no table entry expects: a bug of ours."""
    detail = " ".join(str(error).split())  # one line, whatever the exception's text
    kind = type(error).__name__
    return f"internal error ({kind}: {detail}); this is a bug, please report it"


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
    (each tool prints its own kind of line), and its exit code; any other exception the
    one line of `internal_error` and INTERNAL_ERROR (with debug logging, after its
    traceback); Ctrl-C or SIGTERM prints `interrupted` and gives INTERRUPTED.

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
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            report(internal_error(error))
            return INTERNAL_ERROR
        report(message(error))
        return code

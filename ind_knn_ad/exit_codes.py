"""Exit codes shared by both command-line tools (documented in the README).

Every non-zero code comes with a message on stderr, one line per problem naming the file
(argparse adds its usage lines for code 2), never a traceback. With code 1, stdout holds a
record for every image that could be read, and each one that could not has its own line.
"""

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


class UsageError(Exception):
    """An option that cannot work with this backbone, dataset or machine (exit code 2)."""

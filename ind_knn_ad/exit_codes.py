"""Exit codes shared by both command-line tools (documented in the README).

Every non-zero code comes with a message on stderr, one line per problem naming the file
(argparse adds its usage lines for code 2), never a traceback. With code 1, stdout holds a
record for every image that could be read, and each one that could not has its own line.
"""

OK = 0
SOME_INPUTS_FAILED = 1  # anomaly_detector.py: at least one image could not be scored
USAGE = 2  # bad command line (argparse's own code), or --device cuda without CUDA
MODEL_ERROR = 3  # model file missing, unreadable, invalid, from a newer version, or won't run
DATA_ERROR = 4  # make_model.py: dataset missing, cannot be downloaded, or unusable
BACKBONE_ERROR = 5  # make_model.py: pretrained weights unavailable, or a bad --weights file
WRITE_ERROR = 6  # the model, results file or stdout could not be written (full disk, ...)
INTERRUPTED = 130  # Ctrl-C or SIGTERM; any earlier model file is left as it was

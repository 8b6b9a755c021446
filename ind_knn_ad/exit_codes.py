"""Exit codes shared by both command-line tools (documented in the README)."""

OK = 0
SOME_INPUTS_FAILED = 1  # anomaly_detector.py: at least one image could not be scored
USAGE = 2  # bad command line (argparse's own code)
MODEL_ERROR = 3  # model file missing, unreadable, invalid or from a newer version
DATA_ERROR = 4  # make_model.py: dataset missing, cannot be downloaded, or unusable
BACKBONE_ERROR = 5  # pretrained weights unavailable, or a bad --weights file
WRITE_ERROR = 6  # the model or results file could not be written
INTERRUPTED = 130  # Ctrl-C or SIGTERM

"""Score images with a fitted model: prints `file,score,flag` per image (1 = defective).

Only results go to stdout; logs and errors go to stderr, one line per problem, naming the
file. A directory stands for the image files under it (PNG, JPEG, BMP, TIFF; recursive,
sorted). Runs on ONNX Runtime and NumPy, without importing torch, so a one-off call is quick.
`--format jsonl` prints one JSON object per image instead, and `--heatmap DIR` also writes
a PNG of each image with its anomaly map (see README.md).

Output is CSV (RFC 4180) with `\\n` line ends: a file name holding a comma, a double quote,
CR or LF is enclosed in double quotes, with any double quote doubled. Every record is one
line except for names that contain a line break, whose quoted field spans lines; a CSV
reader gets every name back exactly. The score has 6 decimals and the flag is computed from
the printed score, so the two always agree. Names are written byte for byte as given, even
when they are not valid UTF-8. Exit codes: see ind_knn_ad/cli/exit_codes.py.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.cli.arguments import score_threshold
from ind_knn_ad.errors import ImageError, WriteError
from ind_knn_ad.io.batches import expand_inputs
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.model_file.store import DEFAULT_MODEL_PATH, load_model, named
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.runtime.records import csv_record, printed_score

if TYPE_CHECKING:
    from ind_knn_ad.model_file.schema import Model

log = logging.getLogger("anomaly_detector")
# ONNX Runtime's telemetry writes a device ID under HOME, and prints a coloured warning of
# its own to stderr where it cannot; scoring sends nothing anywhere, so it is off.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# Write errors of the whole folder or disk: the run stops at the first. Any other (a name
# the file system refuses, a FIFO where the PNG goes) costs that image's heatmap alone.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Put -- before file names that start with a dash.",
    )
    parser.add_argument(
        "imagefile",
        nargs="+",
        help="image file(s) to score; a directory means every image under it, sorted",
    )
    parser.add_argument("-l", "--loglevel", choices=("warning", "debug", "info"), default="warning")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_PATH, help=f"default: {DEFAULT_MODEL_PATH}"
    )
    parser.add_argument("--threshold", type=score_threshold, help="override the model's threshold")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default="csv",
        help="csv: file,score,flag (default); jsonl: one JSON object per image",
    )
    parser.add_argument(
        "--heatmap",
        type=Path,
        metavar="DIR",
        help="also write each image with its anomaly map as a PNG into DIR",
    )
    return parser.parse_args(argv)


def json_record(
    path: Path | str,
    printed: str,
    flag: int,
    threshold: float,
    model: Model,
    model_path: Path,
    seconds: float,
    heatmap: str | None,
) -> str:
    """One JSON object on one line. ASCII only: other characters become \\u escapes, and
    bytes of a name that are not UTF-8 become \\udcXX (Python's surrogateescape), so
    json.loads and os.fsencode give the exact name back."""
    fields = {
        "file": os.fsdecode(path),
        "score": float(printed),
        "flag": flag,
        "threshold": threshold,
        "model": os.fsdecode(model_path),
        "method": model.method,
        "seconds": round(seconds, 6),
    }
    if heatmap is not None:
        fields["heatmap"] = heatmap
    return json.dumps(fields) + "\n"


def _quiet_libraries(loglevel: str) -> None:
    """Pillow's own warnings and log lines (corrupt EXIF, oversized TIFF tags) name no file
    and would break the one-line-per-problem stderr; our ImageError line says what failed."""
    logging.getLogger("PIL").setLevel(logging.CRITICAL)
    if loglevel != "debug":
        warnings.simplefilter("ignore")


def score(args: argparse.Namespace, stdout: TextIO) -> int:
    """Score every file, writing records as they come; the exit code says which images
    failed, and an error that stops the run is raised (see exit_codes)."""
    model = load_model(args.model)
    with named(args.model):
        # Patch maps only for heatmaps: without them some methods search less.
        detector = Detector(model, args.device, maps=args.heatmap is not None)
    threshold = model.threshold if args.threshold is None else args.threshold
    log.info("model %s: %s, threshold %.4g", args.model, model.settings["backbone"], threshold)
    if args.heatmap is not None:
        from ind_knn_ad.io.atomic import check_writable
        from ind_knn_ad.report.heatmap import write_heatmap

        try:  # now, not after the first image
            check_writable(args.heatmap / "heatmap.png")
        except OSError as error:
            folder = shown_name(args.heatmap)
            raise WriteError(f"cannot write heatmaps to {folder}: {error}") from error
    status = exit_codes.OK
    failed_write = False
    with named(args.model):
        for path, result, seconds, cut in detector.score_files_timed(expand_inputs(args.imagefile)):
            if isinstance(result, ImageError):
                log.error("%s", result)
                status = exit_codes.SOME_INPUTS_FAILED
                continue
            printed, flag = printed_score(result.score, threshold)
            heatmap = None
            if args.heatmap is not None:
                # Before the record, so that a printed record means its PNG is there.
                try:
                    heatmap = write_heatmap(
                        args.heatmap, path, cut, result, model, detector.preprocess, threshold, flag
                    )
                except OSError as error:
                    message = f"cannot write heatmap for {shown_name(path)}: {error}"
                    if error.errno in _DISK_ERRORS:  # every other heatmap would fail too
                        raise WriteError(message) from error
                    log.error("%s", message)
                    failed_write = True  # this image alone (its name, what is there)
                    continue
            if args.format == "csv":
                record = csv_record([path, printed, flag])
            else:
                record = json_record(
                    path, printed, flag, threshold, model, args.model, seconds, heatmap
                )
            try:
                stdout.write(record)
            except OSError as error:
                raise _stdout_failed(error) from error
            log.debug("%s: score %s, flag %d", shown_name(path), printed, flag)
    return exit_codes.WRITE_ERROR if failed_write else status


def _stdout_failed(error: OSError) -> WriteError:
    """stdout closed early (`| head`) or its disk is full: point stdout at /dev/null so
    that Python's final flush cannot fail again with a traceback; the error says so once."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return WriteError(f"cannot write results to stdout: {error.strerror or error}")


def run(args: argparse.Namespace) -> int:
    """Score to stdout, which must be there to take the records."""
    if sys.stdout is None:
        raise WriteError("cannot write results: stdout is closed")
    # File names from argv may hold bytes that are not UTF-8 (decoded as surrogates):
    # write them back as the same bytes instead of failing.
    sys.stdout.reconfigure(errors="surrogateescape")
    status = score(args, sys.stdout)
    try:
        sys.stdout.flush()
    except OSError as error:
        raise _stdout_failed(error) from error
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(), format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    _quiet_libraries(args.loglevel)
    return exit_codes.run_cli(partial(run, args), partial(log.error, "%s"), "interrupted")

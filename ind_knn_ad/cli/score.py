"""Score images with a fitted model: prints `file,score,flag` per image (1 = defective).

Only results go to stdout; logs and errors go to stderr, one line per problem, naming the
file. A directory stands for the image files under it (PNG, JPEG, BMP, TIFF; recursive,
sorted). Runs on ONNX Runtime and NumPy, without importing torch, so a one-off call is quick.
`--format jsonl` prints one JSON object per image instead, `--heatmap DIR` also writes
a PNG of each image with its anomaly map, and `--report FILE.html` one page of the whole run
(see README.md).

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
import io
import json
import logging
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.cli.arguments import score_threshold
from ind_knn_ad.cli.environment import missing_modules
from ind_knn_ad.cli.inputs import STDIN, scored
from ind_knn_ad.errors import ImageError, WriteError
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.model_file.store import DEFAULT_MODEL_PATH, load_model, named
from ind_knn_ad.report.summary import describe
from ind_knn_ad.runtime.detector import Detector
from ind_knn_ad.runtime.records import csv_record, printed_score

# What `pip install 'ind_knn_ad[report]'` adds (requirements-report.txt) for --report.
REPORT_MODULES = ("matplotlib", "jinja2")

if TYPE_CHECKING:
    from ind_knn_ad.model_file.schema import Model
    from ind_knn_ad.report.score_page import ScoreReport

log = logging.getLogger("anomaly_detector")
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
        nargs="*",
        help="image file(s) to score; a directory means every image under it, sorted; "
        "- alone: names read from stdin, one per line, each printed as soon as scored",
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
        help="also write each image with its anomaly map as a PNG into DIR, in folders "
        "that mirror the inputs' paths",
    )
    _more_options(parser)
    args = parser.parse_args(_spell_null(sys.argv[1:] if argv is None else argv))
    problem = _problem(args)
    if problem:
        parser.error(problem)
    return args


def _spell_null(argv: list[str]) -> list[str]:
    """`-0` (as `xargs -0`) as `--null`, before any `--`. Not an option of the parser: one
    that looks like a negative number makes argparse take `--threshold -1` for options."""
    end = argv.index("--") if "--" in argv else len(argv)
    return ["--null" if arg == "-0" else arg for arg in argv[:end]] + argv[end:]


def _more_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heatmap-flagged-only",
        action="store_true",
        help="with --heatmap: write the maps of flagged images only",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="also write one self-contained HTML page of the run: counts, a score histogram, "
        "the flagged images first with their maps",
    )
    parser.add_argument(
        "--null", action="store_true", help="(or -0) with -: names on stdin end in NUL, not LF"
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="print what the model is (threshold included), score nothing",
    )
    parser.add_argument(
        "--resident",
        action="store_true",
        help="score in a process that keeps the model loaded, started if needed (also "
        "ANOMALY_DETECTOR_RESIDENT=1); the same output as without",
    )


def _problem(args: argparse.Namespace) -> str | None:
    """The first of the inputs that cannot go together, for the parser to report."""
    if args.heatmap_flagged_only and args.heatmap is None:
        return "--heatmap-flagged-only needs --heatmap DIR"
    if args.info:
        return "--info takes no image files" if args.imagefile else None
    if not args.imagefile:
        return "the following arguments are required: imagefile"
    if STDIN in args.imagefile and len(args.imagefile) > 1:
        return "- (names from stdin) goes alone; a file named - is ./-"
    if args.null and args.imagefile != [STDIN]:
        return "-0 (--null) is for names read from stdin (-)"
    missing = [] if args.report is None else missing_modules(REPORT_MODULES)
    if missing:
        return (
            f"--report needs {', '.join(missing)}, not installed; add them with "
            "`pip install 'ind_knn_ad[report]'` (from a source tree: `pip install '.[report]'`)"
        )
    return None


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


class Models:
    """Where a call gets its model and detector: loaded afresh, as a one-off call does; the
    resident scorer (cli/resident.py) keeps them between calls."""

    def model(self, path: Path) -> Model:
        return load_model(path)

    def detector(self, model: Model, device: str, maps: bool) -> Detector:
        return Detector(model, device, maps=maps)


def score(args: argparse.Namespace, stdout: TextIO, stdin: BinaryIO, models: Models) -> int:
    """Score every file, writing records as they come (flushed, for names from stdin); the
    exit code says which images failed, and an error that stops the run is raised (see
    exit_codes). With --info, print the model's description instead."""
    model = models.model(args.model)
    if args.info:
        _write(stdout, describe(model, args.model), flush=False)
        return exit_codes.OK
    with named(args.model):
        # Patch maps only for pictures: without them some methods search less.
        maps = args.heatmap is not None or args.report is not None
        detector = models.detector(model, args.device, maps)
    threshold = model.threshold if args.threshold is None else args.threshold
    log.info("model %s: %s, threshold %.4g", args.model, model.settings["backbone"], threshold)
    if args.heatmap is not None:
        from ind_knn_ad.report.heatmap import write_heatmap

        _check_writable(args.heatmap / "heatmap.png", f"heatmaps to {shown_name(args.heatmap)}")
    report = _report(args, model, detector, threshold)
    status = exit_codes.OK
    failed_write = False
    with named(args.model):
        for path, result, seconds, cut in scored(detector, args.imagefile, stdin, args.null):
            if isinstance(result, ImageError):
                log.error("%s", result)
                status = exit_codes.SOME_INPUTS_FAILED
                if report is not None:
                    report.fail(path)
                continue
            printed, flag = printed_score(result.score, threshold)
            heatmap = None
            if args.heatmap is not None and (flag or not args.heatmap_flagged_only):
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
            _write(stdout, record, flush=args.imagefile == [STDIN])
            log.debug("%s: score %s, flag %d", shown_name(path), printed, flag)
            if report is not None:
                report.add(path, result, cut, float(printed), flag)
    if report is not None:
        _write_report(report, args.report)
    return exit_codes.WRITE_ERROR if failed_write else status


def _write(stdout: TextIO, text: str, flush: bool) -> None:
    try:
        stdout.write(text)
        if flush:
            stdout.flush()
    except OSError as error:
        raise _stdout_failed(error) from error


def _report(
    args: argparse.Namespace, model: Model, detector: Detector, threshold: float
) -> ScoreReport | None:
    """With --report: the page's collector, once its file is known to be writable."""
    if args.report is None:
        return None
    from ind_knn_ad.report.score_page import ScoreReport

    _check_writable(args.report, f"the report {shown_name(args.report)}")
    return ScoreReport(model, args.model, detector.preprocess, threshold)


def _check_writable(path: Path, what: str) -> None:
    """WriteError now, not after the last image, when `path` cannot be written."""
    from ind_knn_ad.io.atomic import check_writable

    try:
        check_writable(path)
    except OSError as error:
        raise WriteError(f"cannot write {what}: {error}") from error


def _write_report(report: ScoreReport, path: Path) -> None:
    try:
        report.write(path)
    except OSError as error:
        raise WriteError(f"cannot write the report {shown_name(path)}: {error}") from error


def _stdout_failed(error: OSError) -> WriteError:
    """stdout closed early (`| head`) or its disk is full: point stdout at /dev/null so
    that Python's final flush cannot fail again with a traceback; the error says so once."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return WriteError(f"cannot write results to stdout: {error.strerror or error}")


def run(args: argparse.Namespace, models: Models) -> int:
    """Score to stdout, which must be there to take the records."""
    if sys.stdout is None:
        raise WriteError("cannot write results: stdout is closed")
    # File names from argv may hold bytes that are not UTF-8 (decoded as surrogates):
    # write them back as the same bytes instead of failing.
    sys.stdout.reconfigure(errors="surrogateescape")
    stdin = sys.stdin.buffer if sys.stdin is not None else io.BytesIO()
    status = score(args, sys.stdout, stdin, models)
    try:
        sys.stdout.flush()
    except OSError as error:
        raise _stdout_failed(error) from error
    return status


def main(argv: list[str] | None = None, models: Models | None = None) -> int:
    """The command; the resident scorer calls it once per request, with its own `models`
    and sys.stdout and sys.stderr (hence `force`: this call's stderr, this call's level)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    _quiet_libraries(args.loglevel)
    run_args = partial(run, args, models or Models())
    return exit_codes.run_cli(run_args, partial(log.error, "%s"), "interrupted")

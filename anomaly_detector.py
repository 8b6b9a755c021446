#!/usr/bin/env python3
"""Score images with a fitted model: prints `file,score,flag` per image (1 = defective).

Only results go to stdout; logs and errors go to stderr. Runs on ONNX Runtime and NumPy,
without importing torch, so a one-off call is quick.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from ind_knn_ad import exit_codes
from ind_knn_ad.images import ImageError
from ind_knn_ad.model_file import DEFAULT_MODEL_PATH, ModelFileError, load_model
from ind_knn_ad.threshold import parse_threshold

log = logging.getLogger("anomaly_detector")


def _threshold(text: str) -> float:
    try:
        value = parse_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if isinstance(value, str):
        raise argparse.ArgumentTypeError("--threshold here takes a number")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("imagefile", nargs="+", help="image file(s) to score")
    parser.add_argument("-l", "--loglevel", choices=("warning", "debug", "info"), default="warning")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_PATH, help=f"default: {DEFAULT_MODEL_PATH}"
    )
    parser.add_argument("--threshold", type=_threshold, help="override the model's threshold")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(), format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        model = load_model(args.model)
    except ModelFileError as error:
        log.error("%s", error)
        return exit_codes.MODEL_ERROR
    from ind_knn_ad.runtime import Detector

    try:
        detector = Detector(model, args.device)
    except ValueError as error:
        log.error("%s", error)
        return exit_codes.USAGE
    threshold = model.threshold if args.threshold is None else args.threshold
    log.info("model %s: %s, threshold %.4g", args.model, model.settings["backbone"], threshold)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    status = exit_codes.OK
    for path, result in detector.score_files(args.imagefile):
        if isinstance(result, ImageError):
            log.error("%s", result)
            status = exit_codes.SOME_INPUTS_FAILED
            continue
        score = f"{result.score:.6f}"
        flag = int(float(score) >= threshold)  # the flag agrees with the printed score
        writer.writerow([path, score, flag])
        log.debug("%s: score %s, flag %d", path, score, flag)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(exit_codes.INTERRUPTED)

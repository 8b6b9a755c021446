#!/usr/bin/env python3
"""Fit a PatchCore, PaDiM or SPADE model on good images, evaluate it on test/ when present
(results and a contact sheet beside the model), save one file."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from ind_knn_ad import environment, exit_codes  # noqa: F401 - environment first: see there
from ind_knn_ad.borders import BORDERS, DEFAULT_BORDER
from ind_knn_ad.limits import FIT_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.methods import DEFAULT, DEFAULT_IMAGE_SCORE, find, having_image_score, names
from ind_knn_ad.model_file import DEFAULT_MODEL_PATH
from ind_knn_ad.operating_point import parse_operating_point, recalibrate
from ind_knn_ad.scoring import IMAGE_SCORES
from ind_knn_ad.threshold import AUTO, parse_threshold

# As in anomaly_detector.py: no ONNX Runtime telemetry, nor its warning on stderr.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# What `--settings fixed` fits with; `auto` searches those of them not given (autosettings).
FIXED = {"backbone": "wide_resnet50_2", "resize": 256, "image_score": DEFAULT_IMAGE_SCORE}


def _checked(parse):  # a parser raising ValueError, as an argparse type
    def argument(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return argument


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"coreset fraction must be in (0, 1], not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="metal_nut", help="MVTec AD category name")
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (MVTec layout, or a folder of good images)"
    )
    parser.add_argument("--download-url", help="base URL of an MVTec AD mirror")
    parser.add_argument("--method", choices=names(), default=DEFAULT, help=f"default: {DEFAULT}")
    parser.add_argument(
        "--settings",
        choices=("auto", "fixed"),
        default="auto",
        help="auto (default): choose backbone, input size, alignment, image score and coreset "
        "from the good images, unless given; fixed: wide_resnet50_2, 256/224, max",
    )
    parser.add_argument("--backbone", help="backbone name")
    parser.add_argument("--layers", type=int, nargs="+", help="backbone stages to use")
    parser.add_argument("--weights", type=Path, help="local backbone weights file")
    parser.add_argument(
        "--border",
        choices=BORDERS,
        help="edge rule of the neighbourhood average: zero padding counted in the mean "
        f"(zeros), left out of it (exclude) or mirrored (reflect); default: {DEFAULT_BORDER}",
    )
    parser.add_argument(
        "--coreset",
        type=_fraction,
        help="memory bank fraction (default: every patch up to 16,384, else 0.1)",
    )
    parser.add_argument(
        "--threshold", type=_checked(parse_threshold), default=AUTO, help="'auto' or a number"
    )
    parser.add_argument(
        "--operating-point",
        type=_checked(parse_operating_point),
        help="f1, recall=R or fpr=F: set the threshold there from the labelled test/ images "
        "(with --evaluate-only: recalibrate the model without refitting)",
    )
    parser.add_argument(
        "--image-score",
        choices=IMAGE_SCORES,
        help=f"{', '.join(having_image_score(IMAGE_SCORES[-1]))} only",
    )
    parser.add_argument("--image-size", type=int, help="resize shorter side to")
    parser.add_argument("--crop", type=int, help="centre crop size (default: 224)")
    parser.add_argument(
        "--align",
        action="store_true",
        help="find the part on a plain background and cut it out turned to one pose, for "
        "parts that lie anywhere at any angle (screws); --image-size then sets the scale",
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="output file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size",
        type=_positive,
        help="images per batch (default: 16 at 224 px, fewer for larger inputs)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the existing --model on the dataset's test/ instead of fitting",
    )
    args = parser.parse_args(argv)
    given = {
        "backbone": args.backbone,
        "resize": args.image_size,
        "crop": args.crop,
        "align": args.align or None,
        "image_score": args.image_score,
        "coreset_fraction": args.coreset,
        "layers": tuple(args.layers) if args.layers else None,
        "border": args.border,
    }
    if args.weights is not None:  # the weights belong to one backbone
        given["backbone"] = args.backbone or FIXED["backbone"]
    args.given = {key: value for key, value in given.items() if value is not None}
    args.auto = args.settings == "auto" and args.method == DEFAULT
    args.backbone = args.backbone or FIXED["backbone"]
    args.image_size = args.image_size or FIXED["resize"]
    args.image_score = args.image_score or FIXED["image_score"]
    args.border = args.border or DEFAULT_BORDER
    if args.align and args.crop is not None:
        parser.error("--crop does not apply with --align: the cut follows the part")
    if args.crop is None:
        args.crop = args.image_size if args.align else 224
    if not 0 < args.crop <= args.image_size:
        parser.error(f"--crop ({args.crop}) must be between 1 and --image-size ({args.image_size})")
    if find(args.method).image_score_for(args.image_score) is None:
        having = " or --method ".join(having_image_score(args.image_score))
        parser.error(f"--image-score {args.image_score} is for --method {having} only")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be a whole number from 0 to {2**32 - 1}, not {args.seed}")
    if not args.align:  # an aligned cut's size is known once the parts are measured
        problem = input_too_large(args.crop, args.crop, FIT_BYTES_PER_PIXEL)
        if problem:
            parser.error(f"--crop {args.crop} (from --image-size {args.image_size}): {problem}")
    return args


def run(args: argparse.Namespace) -> int:
    """Fit (or with --evaluate-only evaluate) and print; errors are raised for run_cli."""
    from ind_knn_ad import preflight, reporting, results

    preflight.check_outputs(args.model)
    if args.weights is None and not args.evaluate_only and "backbone" in args.given:
        preflight.offline_unless_reachable()

    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    out = Console(highlight=False, soft_wrap=True)
    dataset = preflight.find_dataset(args.data_dir, args.dataset, args.download_url)
    if args.evaluate_only:
        saved = results.evaluate_saved(
            args.model,
            dataset,
            args.device,
            None if args.threshold == AUTO else args.threshold,
            args.batch_size,
            lambda model: out.print(f"█│ Running {model.method} on {dataset.name} dataset."),
        )
        if args.operating_point is None:
            out.print(*reporting.results_tables(dataset.name, saved.evaluation, saved.model.method))
            results.write_saved(args.model, saved, dataset.name)
            return exit_codes.OK
        model, evaluation = recalibrate(
            saved.model, saved.evaluation, args.operating_point, f"{dataset.root}/test"
        )
        out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
        console.print(reporting.fit_summary(model))
        results.write_fit(args.model, model, evaluation, saved.entries, dataset.name)
        out.print(f"Model recalibrated in {args.model}.")
        return exit_codes.OK
    out.print(f"█│ Running {args.method} on {dataset.name} dataset.")

    from ind_knn_ad.extractor import FitSettings
    from ind_knn_ad.train import train

    if args.operating_point is not None and not dataset.test:
        raise exit_codes.UsageError("--operating-point needs labelled images in test/")
    progress = partial(reporting.progress_bar, console)
    preprocess = preflight.fit_preprocess(
        dataset, args.image_size, args.crop, args.align and not args.auto, console.print
    )
    settings = FitSettings(
        backbone=args.backbone,
        layers=tuple(args.layers) if args.layers else None,
        border=args.border,
        coreset_fraction=args.coreset,
        image_score=args.image_score,
        preprocess=preprocess,
        seed=args.seed,
    )
    preflight.check_fit(dataset, settings, args.method, args.device, args.threshold == AUTO)
    choice = None
    if args.auto:
        from ind_knn_ad import autosettings

        with preflight.data_at_fault(dataset):
            choice = autosettings.choose(
                dataset.train, args.given, args.device, args.seed, progress, args.weights
            )
        out.print(choice.table())
        settings = choice.settings
        preflight.check_fit(dataset, settings, args.method, args.device, args.threshold == AUTO)
    console.print(f"Backbone {settings.backbone}; {len(dataset.train)} training images.")
    if not dataset.test:
        console.print("No test/ folder: training only, evaluation skipped.")
    sheet = results.SheetCollector(settings.preprocess)
    with preflight.data_at_fault(dataset):
        result = train(
            dataset,
            settings,
            args.threshold,
            args.device,
            args.weights,
            args.batch_size,
            progress,
            args.method,
            sheet,
        )
    model, evaluation = result.model, result.evaluation
    if choice is not None:
        model.settings["auto_settings"] = choice.to_dict()
    if args.operating_point is not None and evaluation is not None:
        source = f"{dataset.root}/test"
        model, evaluation = recalibrate(model, evaluation, args.operating_point, source)
    console.print(reporting.fit_summary(model))
    if evaluation is not None:
        out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
    if "detectability" in model.settings:
        # Caught at the threshold of the fit, also when an operating point replaced it.
        record = model.settings["threshold"]
        measured_at = record.get("replaced", record)["value"]
        out.print(reporting.detectability_table(model.settings["detectability"], measured_at))
    results.write_fit(args.model, model, evaluation, sheet.entries, dataset.name)
    out.print(f"Model written to {args.model}.")
    out.print("Model file creation is complete.")
    return exit_codes.OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupted = "interrupted: no partial file was left behind"
    return exit_codes.run_cli(partial(run, args), exit_codes.print_error, interrupted)


if __name__ == "__main__":
    sys.exit(main())

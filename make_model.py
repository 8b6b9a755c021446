#!/usr/bin/env python3
"""Fit a PatchCore, PaDiM or SPADE model on good images, evaluate it on test/ when present
(results and a contact sheet beside the model), save one file."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from ind_knn_ad.cli import environment  # noqa: F401 - first: it may re-run us in the venv

# isort: split
from ind_knn_ad.calibration.operating_point import parse_operating_point, recalibrate
from ind_knn_ad.calibration.threshold import AUTO
from ind_knn_ad.cli import exit_codes
from ind_knn_ad.cli.arguments import (
    checked,
    complete_fit_arguments,
    fraction,
    parse_threshold,
    positive,
)
from ind_knn_ad.features.augment import VIEW_SETS
from ind_knn_ad.features.borders import BORDERS, DEFAULT_BORDER
from ind_knn_ad.methods import DEFAULT, having_image_score, names
from ind_knn_ad.methods.patchcore.image_score import IMAGE_SCORES
from ind_knn_ad.model_file.store import DEFAULT_MODEL_PATH

# As in anomaly_detector.py: no ONNX Runtime telemetry, nor its warning on stderr.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


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
        type=fraction,
        help="memory bank fraction (default: every patch up to 16,384, else 0.1)",
    )
    parser.add_argument(
        "--threshold", type=checked(parse_threshold), default=AUTO, help="'auto' or a number"
    )
    parser.add_argument(
        "--operating-point",
        type=checked(parse_operating_point),
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
    parser.add_argument(
        "--augment",
        choices=tuple(VIEW_SETS),
        help="also choose the bank from flipped or turned copies of the training images, for "
        "round parts lying at any angle (PatchCore; costs fit time); default: none",
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="output file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size",
        type=positive,
        help="images per batch (default: 16 at 224 px, fewer for larger inputs)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the existing --model on the dataset's test/ instead of fitting",
    )
    args = parser.parse_args(argv)
    problem = complete_fit_arguments(args)
    if problem:
        parser.error(problem)
    return args


def run(args: argparse.Namespace) -> int:
    """Fit (or with --evaluate-only evaluate) and print; errors are raised for run_cli."""
    from ind_knn_ad.cli import preflight
    from ind_knn_ad.report import console as reporting
    from ind_knn_ad.report import results

    preflight.check_outputs(args.model)
    online = not args.auto or "backbone" in args.given  # auto picks among offline backbones
    if args.weights is None and not args.evaluate_only and online:
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
        point = args.operating_point
        model, evaluation = results.recalibrate_saved(args.model, saved, point, dataset)
        out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
        console.print(reporting.fit_summary(model))
        out.print(f"Model recalibrated in {args.model}.")
        return exit_codes.OK
    out.print(f"█│ Running {args.method} on {dataset.name} dataset.")

    from ind_knn_ad.config import FitConfig
    from ind_knn_ad.train import train
    from ind_knn_ad.tuning import autosettings

    if args.operating_point is not None and not dataset.test:
        raise exit_codes.UsageError("--operating-point needs labelled images in test/")
    progress = partial(reporting.progress_bar, console)
    preprocess = preflight.fit_preprocess(
        dataset, args.image_size, args.crop, args.align and not args.auto, console.print
    )
    settings = FitConfig(  # checked now with what the choice starts from, and again after
        backbone=autosettings.first_backbone(args.given) if args.auto else args.backbone,
        layers=tuple(args.layers) if args.layers else None,
        border=args.border,
        coreset_fraction=args.coreset,
        image_score=args.image_score,
        preprocess=preprocess,
        seed=args.seed,
        augment=args.augment,
    )
    check = partial(preflight.check_fit, dataset, method=args.method, device=args.device)
    check(settings=settings, auto_threshold=args.threshold == AUTO)
    choice = None
    if args.auto:
        choice = preflight.choose_settings(
            dataset, args.given, args.device, progress, args.seed, args.weights
        )
        out.print(choice.table())
        settings = choice.settings
        check(settings=settings, auto_threshold=args.threshold == AUTO)
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
        model, evaluation = recalibrate(model, evaluation, args.operating_point, dataset)
    console.print(reporting.fit_summary(model))
    if evaluation is not None:
        out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
    if "detectability" in model.settings:
        out.print(reporting.detectability_table(model))
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

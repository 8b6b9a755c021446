"""Fit a PatchCore, PaDiM or SPADE model on good images, evaluate it on test/ when present
(results, a contact sheet and the sign-off report beside the model), save one file."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console

from ind_knn_ad import methods
from ind_knn_ad.calibration.operating_point import parse_operating_point
from ind_knn_ad.calibration.threshold import AUTO
from ind_knn_ad.cli import exit_codes, preflight
from ind_knn_ad.cli.arguments import checked, fraction, parse_threshold, positive
from ind_knn_ad.config import BATCH_IMAGES, FitConfig
from ind_knn_ad.devices import DEVICES
from ind_knn_ad.features.augment import NONE, VIEW_SETS
from ind_knn_ad.features.borders import BORDERS
from ind_knn_ad.io.datasets import DEFAULT_DATASET
from ind_knn_ad.io.limits import (
    FIT_BYTES_PER_PIXEL,
    fit_address_space_problem,
    input_too_large,
)
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import DEFAULT_MODEL_PATH

DEFAULTS = FitConfig()
WEIGHTS_HOST = ("huggingface.co", 443)  # where timm downloads pretrained weights from


@dataclass(frozen=True)
class FitRequest:
    """What make_model.py was asked: the fit's configuration (with --align, its cut is
    measured once the dataset is found), the settings the user gave (`autosettings.GIVEN`
    names), whether the rest are chosen from the images, and the run's own options
    (`options`: data, output, device, weights, threshold, batch size)."""

    config: FitConfig
    given: AbstractSet[str]
    auto: bool
    options: argparse.Namespace


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        help=f"MVTec AD category (default: {DEFAULT_DATASET}); with --data-dir, the name the "
        "data goes by in the output and the model (default: the folder's name)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (MVTec layout, or a folder of good images)"
    )
    parser.add_argument("--download-url", help="base URL of an MVTec AD mirror")
    parser.add_argument(
        "--method",
        choices=methods.names(),
        default=DEFAULTS.method,
        help=f"default: {DEFAULTS.method}",
    )
    fixed = f"{DEFAULTS.backbone}, {DEFAULTS.preprocess.resize}/{DEFAULTS.preprocess.crop}"
    parser.add_argument(
        "--settings",
        choices=("auto", "quick", "fixed"),
        default="auto",
        help="auto (default): choose backbone, input size, alignment, image score and coreset "
        "from the good images, unless given; quick: the same without trying a larger input "
        f"for small defects (faster fit); fixed: {fixed}, the method's first image score",
    )
    parser.add_argument("--backbone", help="backbone name")
    parser.add_argument("--layers", type=int, nargs="+", help="backbone stages to use")
    parser.add_argument("--weights", type=Path, help="local backbone weights file")
    parser.add_argument(
        "--border",
        choices=BORDERS,
        help="edge rule of the neighbourhood average: zero padding counted in the mean "
        f"(zeros), left out of it (exclude) or mirrored (reflect); default: {DEFAULTS.border}",
    )
    parser.add_argument(
        "--coreset",
        type=fraction,
        help="memory bank fraction (default: every patch up to 16,384, else 0.1)",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
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
        choices=methods.image_score_rules(),
        help="how patch scores make the image's: "
        + "; ".join(
            f"{', '.join(methods.find(name).image_scores)} ({name})" for name in methods.names()
        )
        + "; default: the method's first",
    )
    default = DEFAULTS.preprocess
    parser.add_argument(
        "--image-size",
        type=positive,
        help=f"resize shorter side to (default: {default.resize})",
    )
    parser.add_argument(
        "--crop",
        type=positive,
        help=f"centre crop size (default: {default.crop}, or --image-size when that is smaller)",
    )
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
        f"round parts lying at any angle (PatchCore; costs fit time); default: {NONE}",
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="output file")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument(
        "--batch-size",
        type=positive,
        help=f"images per batch (default: {BATCH_IMAGES} at {DEFAULTS.preprocess.crop} px, "
        "fewer for larger inputs)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --model if it exists (else refused)"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the existing --model on the dataset's test/ instead of fitting",
    )


def parse_args(argv: list[str] | None = None) -> FitRequest:
    """The request, its options checked against each other (a problem is a usage error)."""
    parser = argparse.ArgumentParser(description=__doc__)
    for options in (_data_options, _model_options, _run_options):
        options(parser)
    args = parser.parse_args(argv)
    problem = _problem(args)
    if problem:
        parser.error(problem)
    auto = args.settings != "fixed" and methods.find(args.method).auto_settings
    return FitRequest(fit_config(args), given(args), auto, args)


def _image_score_rules() -> str:
    """Each method's rules, for --help: `max, reweighted, top10 (patchcore); ...`."""
    rules = ((name, methods.find(name).image_scores) for name in methods.names())
    return "; ".join(f"{', '.join(scores)} ({name})" for name, scores in rules)


def _geometry(args: argparse.Namespace) -> tuple[int, int]:
    """The resize and crop asked for: a given crop, else the whole frame with --align and
    the default crop without, or the whole size where that is smaller than the default crop
    (`--image-size 100` alone asks for a 100 px input, not for a refusal)."""
    default = DEFAULTS.preprocess
    resize = default.resize if args.image_size is None else args.image_size
    if args.crop is not None:
        return resize, args.crop
    return resize, resize if args.align else min(default.crop, resize)


def _problem(args: argparse.Namespace) -> str | None:
    """The first of the options that cannot go together, for the parser to report."""
    method = methods.find(args.method)
    resize, crop = _geometry(args)
    augment = args.augment or NONE
    if args.model.is_file() and not (args.force or args.evaluate_only):
        return f"{args.model} exists: --force replaces it, or give another --model"
    if args.align and args.crop is not None:
        return "--crop does not apply with --align: the cut follows the part"
    if args.align and augment != NONE:
        return (
            "--augment does not apply with --align: an aligned part is already turned to one pose"
        )
    # The methods that keep a coreset store its settings (SPADE keeps every patch, PaDiM a
    # Gaussian per position).
    keeping = [
        name for name in methods.names() if "coreset" in methods.find(name).required_settings
    ]
    if args.coreset is not None and args.method not in keeping:
        return f"--coreset is for --method {' or --method '.join(keeping)} only"
    if augment != NONE and not methods.fitter(args.method).takes_views:
        return f"--augment is for --method {' or --method '.join(methods.taking_views())} only"
    if not 0 < crop <= resize:
        return f"--crop ({crop}) must be between 1 and --image-size ({resize})"
    if args.image_score is not None and args.image_score not in method.image_scores:
        having = " or --method ".join(methods.having_image_score(args.image_score))
        return f"--image-score {args.image_score} is for --method {having} only"
    if not 0 <= args.seed < 2**32:
        return f"--seed must be a whole number from 0 to {2**32 - 1}, not {args.seed}"
    if not args.align:  # an aligned cut's size is known once the parts are measured
        problem = input_too_large(crop, crop, FIT_BYTES_PER_PIXEL)
        if problem:
            return f"--crop {crop} (from --image-size {resize}): {problem}"
    # Before torch is imported: under a low enough limit, importing it fails.
    side = resize if args.align else crop  # the smallest an aligned cut is likely to be
    problem = fit_address_space_problem(side, side)
    if problem:
        return f"--image-size {resize}: {problem}"
    return None


def fit_config(args: argparse.Namespace) -> FitConfig:
    """The configuration the options ask for (FitConfig's defaults where none is given),
    its preprocessing without the --align cut, which is measured on the images."""
    resize, crop = _geometry(args)
    values = {
        "backbone": args.backbone,
        "layers": tuple(args.layers) if args.layers else None,
        "border": args.border,
        "coreset": args.coreset,
        "image_score": args.image_score,
        "augment": args.augment,
    }
    return FitConfig(
        method=args.method,
        seed=args.seed,
        preprocess=Preprocess(resize=resize, crop=crop),
        **{name: value for name, value in values.items() if value is not None},
    )


def given(args: argparse.Namespace) -> frozenset[str]:
    """The settings the user gave, which the automatic choice keeps; with --weights the
    backbone counts as given, since weights belong to one."""
    named = {
        "backbone": args.backbone,
        "resize": args.image_size,
        "crop": args.crop,
        "align": args.align or None,
        "image_score": args.image_score,
        "coreset": args.coreset,
        "layers": args.layers,
        "border": args.border,
        "augment": args.augment,
    }
    names = {name for name, value in named.items() if value is not None}
    return frozenset(names | ({"backbone"} if args.weights is not None else set()))


def offline_unless_reachable(request: FitRequest) -> None:
    """Without network, the Hugging Face hub retried a missing download for about 53 s
    before failing: for a fit that may download weights, when its host cannot be reached in
    3 s, tell it to stay offline (it then uses cached weights or fails at once, and the fit
    says what to do instead). Before timm loads: the hub reads this when first imported."""
    args = request.options
    online = not request.auto or "backbone" in request.given  # auto picks offline backbones
    if args.weights is not None or args.evaluate_only or not online:
        return
    if os.environ.get("HF_HUB_OFFLINE"):
        return
    try:
        socket.create_connection(WEIGHTS_HOST, timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"


def main(argv: list[str] | None = None) -> int:
    request = parse_args(argv)
    if request.options.model.is_file() and not request.options.evaluate_only:
        print(f"note: replacing {request.options.model} (--force)", file=sys.stderr)
    offline_unless_reachable(request)
    interrupted = "interrupted: no partial file was left behind"
    return exit_codes.run_cli(partial(_run, request), exit_codes.print_error, interrupted)


def _run(request: FitRequest) -> int:
    """The torch-free checks (`preflight.prepare`), then the fit: its modules, torch among
    them, load only once the outputs, the dataset and the memory plan are known to be good,
    so that --help, usage errors and a fit that cannot run here are quick."""
    console = Console(stderr=True, soft_wrap=True)
    prepared = preflight.prepare(request, console.print)
    from ind_knn_ad.cli.fit_run import run

    return run(request, prepared, console)

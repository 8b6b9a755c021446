"""Argument types shared by the two scripts: a value parser raising ValueError becomes an
argparse type, so a bad value is a usage error (exit 2) with the parser's own message."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ind_knn_ad.features.augment import NONE
from ind_knn_ad.features.borders import DEFAULT_BORDER
from ind_knn_ad.io.limits import FIT_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.methods import (
    DEFAULT,
    DEFAULT_IMAGE_SCORE,
    find,
    fitter,
    having_image_score,
    taking_views,
)

Value = TypeVar("Value")

# What `make_model.py --settings fixed` fits with; `auto` searches what of it is not given.
FIXED = {"backbone": "wide_resnet50_2", "resize": 256, "image_score": DEFAULT_IMAGE_SCORE}


def checked(parse: Callable[[str], Value]) -> Callable[[str], Value]:
    """`parse` as an argparse type: its ValueError's message is what the user reads."""

    def argument(text: str) -> Value:
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
        raise ValueError(f"must be a positive whole number, not {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:
        raise ValueError(f"coreset fraction must be in (0, 1], not {text}")
    return value


positive = checked(_positive)
fraction = checked(_fraction)


def given_settings(weights: Path | None, **values: Any) -> dict[str, Any]:
    """The settings a user gave (those not None), which `autosettings.choose` must not
    search; with `weights` the backbone counts as given, since weights belong to one."""
    if weights is not None:
        values["backbone"] = values.get("backbone") or FIXED["backbone"]
    return {key: value for key, value in values.items() if value is not None}


def complete_fit_arguments(args: argparse.Namespace) -> str | None:
    """Fill in make_model.py's defaults (recording in `args.given` what was given, and in
    `args.auto` whether settings are chosen) and check the options against each other;
    the first problem found, for the parser to report, or None."""
    args.given = given_settings(
        weights=args.weights,
        backbone=args.backbone,
        resize=args.image_size,
        crop=args.crop,
        align=args.align or None,
        image_score=args.image_score,
        coreset_fraction=args.coreset,
        layers=tuple(args.layers) if args.layers else None,
        border=args.border,
        augment=args.augment,
    )
    args.auto = args.settings == "auto" and args.method == DEFAULT
    args.backbone = args.backbone or FIXED["backbone"]
    args.image_size = args.image_size or FIXED["resize"]
    args.image_score = args.image_score or FIXED["image_score"]
    args.border = args.border or DEFAULT_BORDER
    args.augment = args.augment or NONE
    if args.align and args.crop is not None:
        return "--crop does not apply with --align: the cut follows the part"
    if args.align and args.augment != NONE:
        return (
            "--augment does not apply with --align: an aligned part is already turned to one pose"
        )
    if args.augment != NONE and not fitter(args.method).takes_views:
        return f"--augment is for --method {' or --method '.join(taking_views())} only"
    if args.crop is None:
        args.crop = args.image_size if args.align else 224
    if not 0 < args.crop <= args.image_size:
        return f"--crop ({args.crop}) must be between 1 and --image-size ({args.image_size})"
    if find(args.method).image_score_for(args.image_score) is None:
        having = " or --method ".join(having_image_score(args.image_score))
        return f"--image-score {args.image_score} is for --method {having} only"
    if not 0 <= args.seed < 2**32:
        return f"--seed must be a whole number from 0 to {2**32 - 1}, not {args.seed}"
    if not args.align:  # an aligned cut's size is known once the parts are measured
        problem = input_too_large(args.crop, args.crop, FIT_BYTES_PER_PIXEL)
        if problem:
            return f"--crop {args.crop} (from --image-size {args.image_size}): {problem}"
    return None


def parse_threshold(text: str) -> float | str:
    """make_model.py's --threshold: `auto` (`calibration.threshold.AUTO`) or a number.

    Here, not with the threshold rules, so that the scorer parses its --threshold without
    importing the fit's calibration code (tests/test_scoring_imports.py).
    """
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"threshold must be 'auto' or a number, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"threshold must be a finite positive number, not {text!r}")
    return value


def score_threshold(text: str) -> float:
    """anomaly_detector.py's --threshold: a number only (argparse type)."""
    value = checked(parse_threshold)(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError("--threshold here takes a number")
    return value

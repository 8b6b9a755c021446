"""Argument types shared by the two scripts: a value parser raising ValueError becomes an
argparse type, so a bad value is a usage error (exit 2) with the parser's own message."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Value = TypeVar("Value")


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

"""Setting the threshold from labelled images, when a user has some defective ones.

Good-only fitting (`threshold.py`) guesses where good images end. With labelled good and
defective images the threshold can instead be put where the user wants the trade-off:

- `f1`: the best F1 score (defective is the positive class);
- `recall=R`: the highest threshold that still flags at least R of the defective images;
- `fpr=F`: the lowest threshold that flags at most F of the good images.

The threshold goes halfway between the two neighbouring scores that the rule separates, so
an image scoring a little off a labelled one is still decided the same way. What the rule
was based on (counts, errors at the threshold) is recorded with the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ind_knn_ad.calibration.threshold import cut_counts, false_alarm_bound
from ind_knn_ad.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ind_knn_ad.io.datasets import Dataset
    from ind_knn_ad.model_file.schema import Model
    from ind_knn_ad.report.evaluate import Evaluation

RULES = ("f1", "recall", "fpr")


@dataclass(frozen=True)
class OperatingPoint:
    rule: str
    target: float | None = None  # the R of recall=R or the F of fpr=F

    def __str__(self) -> str:
        return self.rule if self.target is None else f"{self.rule}={self.target:g}"


def parse_operating_point(text: str) -> OperatingPoint:
    """`f1`, `recall=R` or `fpr=F` with R in (0, 1] and F in [0, 1) (argparse type)."""
    rule, _, value = text.partition("=")
    if rule == "f1" and not value:
        return OperatingPoint("f1")
    if rule in ("recall", "fpr") and value:
        try:
            target = float(value)
        except ValueError:
            target = math.nan
        if (0 < target <= 1) if rule == "recall" else (0 <= target < 1):
            return OperatingPoint(rule, target)
        span = "in (0, 1]" if rule == "recall" else "in [0, 1)"
        raise ValueError(f"{rule} must be a number {span}, not {value!r}")
    raise ValueError(f"operating point must be f1, recall=R or fpr=F, not {text!r}")


def operating_threshold(
    good: np.ndarray, defective: np.ndarray, point: OperatingPoint, source: str
) -> tuple[float, dict]:
    """The threshold at `point` for labelled scores, and the record stored in the model.

    Raises ConfigError (setting `operating_point`) when the labels cannot support the rule,
    with no good or no defective image; DatasetError for scores that are not finite.
    """
    good, defective = np.asarray(good, np.float64), np.asarray(defective, np.float64)
    if not good.size or not defective.size:
        raise ConfigError(
            f"operating point needs good and defective labelled images; {source} has "
            f"{good.size} good and {defective.size} defective",
            "operating_point",
        )
    if not (np.isfinite(good).all() and np.isfinite(defective).all()):
        raise DatasetError(
            f"{source}: labelled images score as infinite: their features overflow float32"
        )
    cuts, false_alarms, caught = cut_counts(good, defective)
    if point.rule == "f1":
        # F1 = 2 TP / (2 TP + FP + FN); ties go to the higher threshold (fewer alarms).
        f1 = 2 * caught / (2 * caught + false_alarms + (defective.size - caught))
        index = len(cuts) - 1 - int(np.argmax(f1[::-1]))
    elif point.rule == "recall":
        assert point.target is not None
        index = int(np.flatnonzero(caught >= math.ceil(point.target * defective.size - 1e-9))[-1])
    else:
        assert point.target is not None
        index = int(np.flatnonzero(false_alarms <= math.floor(point.target * good.size + 1e-9))[0])
    value = float(cuts[index])
    details = {
        "rule": f"operating point {point} on labelled images",
        "operating_point": str(point),
        "labelled": {
            "source": source,
            "good": int(good.size),
            "defective": int(defective.size),
            "false_alarms": int(false_alarms[index]),
            "misses": int(defective.size - caught[index]),
        },
    }
    return value, details


def recalibrate(
    model: Model, evaluation: Evaluation, point: OperatingPoint, dataset: Dataset
) -> tuple[Model, Evaluation]:
    """The model with its threshold set at `point` from the labelled scores of an
    evaluation on `dataset`'s test/ (the rule it replaces is kept under "replaced"), and
    the evaluation at that threshold. Nothing else of the model changes: no refit."""
    good, defective = evaluation.labelled_scores()
    value, details = operating_threshold(good, defective, point, f"{dataset.root}/test")
    previous = model.settings["threshold"]
    record = {"value": value, **details, "replaced": previous.get("replaced", previous)}
    settings = {**model.settings, "threshold": record}
    return replace(model, settings=settings), evaluation.at(value)


def _recall_floor(caught: int, count: int, confidence: float = 0.95) -> float:
    """Lower `confidence` bound on recall from `caught` of `count` defective images
    (Clopper-Pearson, one-sided)."""
    from scipy.stats import beta

    return 0.0 if caught == 0 else float(beta.ppf(1 - confidence, caught, count - caught + 1))


def few_labels_warning(record: dict) -> str | None:
    """A warning when the threshold `record` (the model's `settings["threshold"]`) was set
    from labelled images too few for its operating point: the 95% bounds on recall and on
    the false-alarm rate from those counts, when one falls short of the target (or, for
    `f1`, when either class has under 20 images). None for other thresholds."""
    labelled = record.get("labelled")
    if labelled is None:
        return None
    good, defective = labelled["good"], labelled["defective"]
    alarms, caught = labelled["false_alarms"], defective - labelled["misses"]
    recall_floor = _recall_floor(caught, defective)
    alarm_ceiling = false_alarm_bound(alarms, good)
    point = parse_operating_point(record["operating_point"])
    if point.rule == "recall":
        short = recall_floor < (point.target or 0)
    elif point.rule == "fpr":
        short = alarm_ceiling > (point.target or 0)
    else:
        short = min(good, defective) < 20
    if not short:
        return None
    return (
        f"threshold set for {point} from only {good} good and {defective} defective labelled "
        f"images: with {caught} of {defective} defective caught, recall may be as low as "
        f"{recall_floor:.0%}, and with {alarms} of {good} good flagged, the false-alarm rate "
        f"as high as {alarm_ceiling:.0%} (95% bounds). Label more images before relying on it."
    )

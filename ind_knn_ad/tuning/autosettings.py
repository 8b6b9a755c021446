"""Fit settings chosen from good training images alone, for users who do not know the recipe.

The defaults miss small defects on parts that lie anywhere (screws); the recipe that fixes
them (`--align --image-size 512 --coreset 0.01 --image-score top10`) ruins parts whose pose
is itself checked (a transistor turned or moved). So the choice has two steps:

1. **Alignment, from the data** (`pose`). Align where the training parts lie in varied poses: the
   part's long axis points in many directions (counted only for elongated parts, since a
   near-round part's axis is noise), or its centre wanders. A frame whose border is not
   plain background (a texture) is never aligned. Synthetic defects cannot decide this:
   none of them turns or moves a part, so they would never show what alignment hides.
2. **The rest, by validation** (`validation`). Among a few candidates of that geometry
   (offline backbone, image score, coreset fraction), the one that best separates held-out
   good images from synthetic defects made from them: the share of defects scoring above
   every held-out good image, half of them small (4% of the input's side). Each backbone's
   features are computed once, on a seeded subsample; image scores and bank sizes are
   variants over them.

`bench/auto_settings.py` measures the pose statistic, the choice and the fits it gives on
every shared set; the thresholds below are set from it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.table import Table

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.augment import NONE
from ind_knn_ad.features.borders import DEFAULT_BORDER
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import ProgressFactory
from ind_knn_ad.search.coreset import PROJECTION_DIM
from ind_knn_ad.tuning.pose import PoseSpread, pose_spread
from ind_knn_ad.tuning.validation import Candidate, Trial, _Validation

OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")  # Lite1: see docs/benchmarks.md
FIXED_POSE = Preprocess()  # today's 256/224 centre crop
ALIGNED_RESIZE = 512  # the README's screw recipe
SEARCHED = ("backbone", "image_score", "coreset_fraction", "resize", "crop", "align")
PASSED_ON = ("layers", "neighbourhood", "border", "projection_dim", "augment")

# Validation (`validation`).
TIE = 0.05  # a cheaper candidate within this share of the best's catch rate wins


def no_progress(description: str, total: int) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class Choice:
    """What `choose` decided: the complete fit settings, why, and the evidence."""

    settings: FitConfig
    fixed: dict[str, Any]
    pose: PoseSpread | None
    trials: list[Trial]
    chosen: Trial | None  # None when every searched setting was given
    reason: str
    seconds: float
    feature_seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For the model's metadata (`settings["auto_settings"]`) and the results file."""
        preprocess = self.settings.preprocess
        return {
            "chosen": None if self.chosen is None else self.chosen.candidate.name,
            "reason": self.reason,
            "given": sorted(self.fixed),
            "align": preprocess.align is not None,
            "pose": None if self.pose is None else self.pose.to_dict(),
            "settings": {
                "backbone": self.settings.backbone,
                "image_score": self.settings.image_score,
                "coreset_fraction": self.settings.coreset_fraction,
                "preprocess": preprocess.to_dict(),
            },
            "validation": self.validation,
            "candidates": [trial.to_dict() for trial in self.trials],
            "feature_seconds": {k: round(v, 2) for k, v in self.feature_seconds.items()},
            "seconds": round(self.seconds, 2),
        }

    def table(self) -> Table:
        """The candidates and their validation figures, the chosen one marked, for printing."""
        preprocess = self.settings.preprocess
        geometry = (
            f"aligned {preprocess.size[0]}x{preprocess.size[1]}"
            if preprocess.align is not None
            else f"{preprocess.resize}/{preprocess.crop}"
        )
        table = Table(title=f"Settings chosen from good images ({geometry})")
        for column in ("", "candidate", "defects caught", "small caught", "ROC AUC", "s"):
            table.add_column(column, justify="left" if column in ("", "candidate") else "right")
        for trial in self.trials:
            mark = "->" if trial is self.chosen else ""
            table.add_row(
                mark,
                trial.candidate.name,
                f"{trial.caught:.0%}",
                f"{trial.caught_small:.0%}",
                f"{trial.auroc:.3f}",
                f"{trial.seconds:.1f}",
            )
        pose = "" if self.pose is None else f"Pose: {self.pose.summary()}.\n"
        features = ", ".join(f"{k} {v:.1f} s" for k, v in self.feature_seconds.items())
        table.caption = f"{pose}{self.reason}" + (f"\nFeatures: {features}." if features else "")
        return table


def choose(
    train_paths: Sequence[Path],
    fixed: Mapping[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressFactory = no_progress,
    weights: Path | None = None,
) -> Choice:
    """The fit settings for these good training images (PatchCore).

    `fixed` holds the settings the user gave explicitly; each wins and is not searched:
    `backbone`, `image_score`, `coreset_fraction`, `resize` (--image-size), `crop`, `align`
    (bool; True for --align; a given crop, or an `augment` other than none, means no
    alignment), and, passed on unsearched, `layers`, `neighbourhood`, `border`,
    `projection_dim`, `augment`. make_model.py parses with
    `default=None` to tell a given flag from a default and passes only the given ones;
    `--weights` belongs to a backbone, so with it `backbone` counts as given. `seed` and
    `device` are make_model's own. It then fits with `Choice.settings`, stores
    `Choice.to_dict()` as `settings["auto_settings"]` and prints `Choice.table()`;
    `--settings fixed` skips this. ValueError for an unknown key, for `align` with
    `augment`, or for `align` on images with no part found.
    """
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(SEARCHED) - set(PASSED_ON)
    if unknown:
        raise ValueError(f"settings that cannot be given: {', '.join(sorted(unknown))}")
    augment = fixed.get("augment", NONE)
    if fixed.get("align") and augment != NONE:
        raise ValueError("augmentation does not apply to an aligned part, turned to one pose")
    start = time.perf_counter()
    paths = list(train_paths)
    pose = None
    if "align" in fixed:
        align, pose_reason = bool(fixed["align"]), "alignment given"
    elif "crop" in fixed:  # a centre crop was asked for, which an aligned cut replaces
        align, pose_reason = False, "centre crop given: not aligned"
    elif augment != NONE:  # turned copies were asked for, where alignment would undo turns
        align, pose_reason = False, "augmentation given: not aligned"
    else:
        pose = pose_spread(paths, seed)
        align, pose_reason = pose.varied, pose.reason()
    preprocess = _geometry(paths, fixed, align)
    candidates = _candidates(fixed, preprocess)
    base = FitConfig(
        backbone=candidates[0].backbone,
        layers=fixed.get("layers"),
        neighbourhood=fixed.get("neighbourhood", 3),
        border=fixed.get("border", DEFAULT_BORDER),
        coreset_fraction=candidates[0].coreset_fraction,
        projection_dim=fixed.get("projection_dim", PROJECTION_DIM),
        image_score=candidates[0].image_score,
        preprocess=preprocess,
        seed=seed,
        augment=augment,
    )
    if len(candidates) == 1:
        reason = f"{pose_reason}; every other searched setting was given"
        return Choice(base, fixed, pose, [], None, reason, time.perf_counter() - start)
    validation = _Validation(paths, base, seed)
    trials, feature_seconds = validation.run(candidates, device, weights, progress)
    chosen, why = _pick(trials)
    settings = _with(base, chosen.candidate)
    seconds = time.perf_counter() - start
    return Choice(
        settings,
        fixed,
        pose,
        trials,
        chosen,
        f"{pose_reason}; {why}",
        seconds,
        feature_seconds,
        validation.summary(),
    )


def _geometry(paths: Sequence[Path], fixed: Mapping[str, Any], align: bool) -> Preprocess:
    """The input: the aligned cut at 512 px per shorter side (the box measured on every
    training image, as make_model.py's --align does), or today's 256/224 centre crop; a
    given size or crop wins."""
    if align:
        resize = int(fixed.get("resize", ALIGNED_RESIZE))
        return Preprocess(resize=resize, crop=resize, align=measure_box(paths))
    resize = int(fixed.get("resize", FIXED_POSE.resize))
    return Preprocess(resize=resize, crop=int(fixed.get("crop", FIXED_POSE.crop)))


def first_backbone(fixed: Mapping[str, Any]) -> str:
    """The backbone the search starts from (the given one, if any): what make_model.py
    checks the other options against before choosing."""
    return fixed.get("backbone", OFFLINE_BACKBONES[0])


def _candidates(fixed: Mapping[str, Any], preprocess: Preprocess) -> list[Candidate]:
    """The searched grid in order of preference on a tie: cheaper first (Lite0 before Lite2,
    the smaller bank first), then the image score of today's default (fixed pose) or of the
    README's screw recipe (aligned). A 1% bank is tried only for inputs larger than the
    default's, whose banks grow with their patches."""
    backbones = [fixed["backbone"]] if "backbone" in fixed else list(OFFLINE_BACKBONES)
    if "image_score" in fixed:
        scores = [fixed["image_score"]]
    else:
        scores = ["top10", "max"] if preprocess.align is not None else ["max", "top10"]
    width, height = preprocess.size
    larger = width * height > FIXED_POSE.crop**2
    if "coreset_fraction" in fixed:
        fractions = [float(fixed["coreset_fraction"])]
    else:
        fractions = [0.01, 0.1] if larger else [None]
    return [
        Candidate(backbone, score, fraction)
        for fraction in fractions
        for backbone in backbones
        for score in scores
    ]


def _with(settings: FitConfig, candidate: Candidate) -> FitConfig:
    return replace(
        settings,
        backbone=candidate.backbone,
        image_score=candidate.image_score,
        coreset_fraction=candidate.coreset_fraction,
    )


def _pick(trials: list[Trial]) -> tuple[Trial, str]:
    """The first trial (cheapest) whose catch rate is within TIE of the best's, where the
    best catches most (ROC AUC breaking ties), and why."""
    best = max(trials, key=lambda t: (t.caught, t.auroc))
    chosen = next(t for t in trials if t.caught >= best.caught - TIE)
    why = (
        f"{chosen.candidate.name} catches {chosen.caught:.0%} of synthetic defects above every "
        f"held-out good image ({chosen.caught_small:.0%} of the small ones)"
    )
    if chosen is not best:
        why += f", within {TIE:.0%} of the best ({best.candidate.name}, {best.caught:.0%})"
    return chosen, why

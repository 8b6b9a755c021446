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
3. **The input's resolution, by the same validation** (`_resolution`). Where the base
   input (256/224, or the aligned cut) misses most small defects and the photos have the
   pixels for more, the whole frame at up to 512 px is validated too, and taken when it
   catches more. A texture with small flaws needs it; a part whose defects the base input
   already sees keeps the base input and its cost.

`bench/auto_settings.py` measures the pose statistic, the choice and the fits it gives on
every shared set; the thresholds below are set from it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.table import Table

from ind_knn_ad.calibration.threshold import FEW
from ind_knn_ad.config import FitConfig
from ind_knn_ad.errors import ConfigError, DatasetError
from ind_knn_ad.features.augment import NONE
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.fitting import ProgressFactory, no_progress
from ind_knn_ad.search.coreset import FULL_BANK_PATCHES
from ind_knn_ad.tuning.backbones import searched_backbones
from ind_knn_ad.tuning.pose import PoseSpread, pose_spread
from ind_knn_ad.tuning.validation import Candidate, Trial, _Validation

FIXED_POSE = Preprocess()  # today's 256/224 centre crop
ALIGNED_RESIZE = 512  # the README's screw recipe
# What a user can give, by name: FitConfig's fields, and `resize`, `crop` and `align` for
# the parts of its `preprocess` that --image-size, --crop and --align set. The backbone,
# image score, coreset and geometry are searched unless given; the rest is passed on.
GIVEN = frozenset(
    {"backbone", "image_score", "coreset", "resize", "crop", "align"}
    | {"layers", "neighbourhood", "border", "projection_dim", "augment"}
)
# The model file's names for what was given (`Choice.to_dict`), where a field's differs.
RECORDED_AS = {"coreset": "coreset_fraction"}

# Validation (`validation`).
TIE = 0.05  # a cheaper candidate within this share of the best's catch rate wins
# The larger input (`_resolution`): the whole frame at up to LARGER px, tried where the base
# geometry catches fewer than SMALL_CAUGHT of the small synthetic defects, for photos whose
# shorter side (LARGER_FROM px or more) holds detail the base input drops; its bank is
# LARGER_FRACTION of the patches, as the aligned 512 px input's cheaper one
# (bench/flags.py measures the choice on every shared set). Never above the photo's own
# size: below it every step up paid on both shared sets with the pixels for it, above it
# (upsampled) one set lost (bench/resolution.py). The fit budget it is held to:
# 300 photos of 1024 px within 10 minutes and 6 GB on 2 cores (bench/budget.py), which
# the two-stage coreset (search/two_stage.py) and one backbone at the larger input keep.
LARGER = 512
LARGER_FROM = 448
GAIN = TIE  # what the larger input must catch more, in share of the synthetic defects
SMALL_CAUGHT = 0.5
LARGER_FRACTION = 0.01
# Patches per image are counted at the finest stage's stride, every offline backbone's
# (features/registry.py); coarser --layers give fewer, so the count only errs high.
FINEST_STRIDE = 8


@dataclass
class Choice:
    """What `choose` decided: the completed configuration, why, and the evidence."""

    config: FitConfig
    given: AbstractSet[str]
    pose: PoseSpread | None
    trials: list[Trial]
    chosen: Trial | None  # None when every searched setting was given
    reason: str
    seconds: float
    feature_seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For the model's metadata (`settings["auto_settings"]`) and the results file."""
        preprocess = self.config.preprocess
        return {
            "chosen": None if self.chosen is None else self.chosen.candidate.name,
            "reason": self.reason,
            "given": sorted(RECORDED_AS.get(name, name) for name in self.given),
            "align": preprocess.align is not None,
            "pose": None if self.pose is None else self.pose.to_dict(),
            "settings": {
                "backbone": self.config.backbone,
                "image_score": self.config.image_score,
                "coreset_fraction": self.config.coreset,
                "preprocess": preprocess.to_dict(),
            },
            "validation": self.validation,
            "candidates": [trial.to_dict() for trial in self.trials],
            "feature_seconds": {k: round(v, 2) for k, v in self.feature_seconds.items()},
            "seconds": round(self.seconds, 2),
        }

    def table(self) -> Table:
        """The candidates and their validation figures, the chosen one marked, for printing."""
        table = Table(title=f"Settings chosen from good images ({self.config.preprocess.label})")
        columns = ("", "input", "candidate", "defects caught", "small caught", "ROC AUC", "s")
        for column in columns:
            left = columns.index(column) < 3
            # Folded, not cut with an ellipsis, on an 80-column log: the name is the choice.
            table.add_column(column, justify="left" if left else "right", overflow="fold")
        for trial in self.trials:
            table.add_row(
                "->" if trial is self.chosen else "",
                trial.preprocess.label,
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
    config: FitConfig,
    train_paths: Sequence[Path],
    given: AbstractSet[str] = frozenset(),
    *,
    device: str = "auto",
    progress: ProgressFactory = no_progress,
    weights: Path | None = None,
    larger: bool = True,
) -> Choice:
    """`config` completed for these good training images (PatchCore), in `Choice.config`.

    `given` names the settings the user gave (`GIVEN`); each keeps its value in `config`
    and is not searched. Of the searched ones: `align` given means aligned; a given `crop`,
    or an `augment` other than none, means not aligned; `resize` and `crop` are the parts
    of `config.preprocess` that --image-size and --crop set. Every other field of `config`
    (seed included) is passed on as it is. `larger=False` (a quick fit) never tries the
    larger input (`_larger_input`). The caller fits with `Choice.config`, stores
    `Choice.to_dict()` as `settings["auto_settings"]` and prints `Choice.table()`.
    ValueError for a name not in GIVEN; ConfigError for `align` with `augment`;
    DatasetError for `align` on images with no part found.
    """
    unknown = set(given) - GIVEN
    if unknown:
        raise ValueError(f"settings that cannot be given: {', '.join(sorted(unknown))}")
    if "align" in given and config.augment != NONE:
        raise ConfigError(
            "augmentation does not apply to an aligned part, turned to one pose", "augment"
        )
    start = time.perf_counter()
    paths = list(train_paths)
    pose, align, pose_reason = _alignment(paths, config, given)
    preprocess = _geometry(paths, config, given, align)
    candidates = _candidates(config, given, preprocess, len(paths))
    base = _with(replace(config, preprocess=preprocess), candidates[0])
    bigger = _larger_input(config, given, pose, preprocess) if larger else None
    if len(candidates) == 1 and bigger is None:
        reason = f"{pose_reason}; every other searched setting was given"
        return Choice(base, given, pose, [], None, reason, time.perf_counter() - start)
    search = _Search(paths, config.seed, device, weights, progress)
    chosen, why = search.best(base, candidates)
    if bigger is not None:
        chosen, why = _resolution(search, base, given, chosen, why, bigger)
    completed = _with(replace(base, preprocess=chosen.preprocess), chosen.candidate)
    return Choice(
        completed,
        given,
        pose,
        search.trials,
        chosen,
        f"{pose_reason}; {why}",
        time.perf_counter() - start,
        search.feature_seconds,
        search.summaries,
    )


def _alignment(
    paths: Sequence[Path], config: FitConfig, given: AbstractSet[str]
) -> tuple[PoseSpread | None, bool, str]:
    """The pose statistic (None where the user's settings decide), whether to align, why."""
    if "align" in given:
        return None, True, "alignment given"
    if "crop" in given:  # a centre crop was asked for, which an aligned cut replaces
        return None, False, "centre crop given: not aligned"
    if config.augment != NONE:  # turned copies were asked for; alignment would undo turns
        return None, False, "augmentation given: not aligned"
    pose = pose_spread(paths, config.seed)
    return pose, pose.varied, pose.reason()


class _Search:
    """The validation of one geometry's candidates after another, their trials kept."""

    def __init__(
        self,
        paths: list[Path],
        seed: int,
        device: str,
        weights: Path | None,
        progress: ProgressFactory,
    ) -> None:
        self.paths, self.seed = paths, seed
        self.device, self.weights, self.progress = device, weights, progress
        self.trials: list[Trial] = []
        self.feature_seconds: dict[str, float] = {}
        self.summaries: dict[str, Any] = {}

    @property
    def images(self) -> int:
        return len(self.paths)

    def best(self, base: FitConfig, candidates: list[Candidate]) -> tuple[Trial, str]:
        """`_pick` among `candidates` on `base`'s geometry."""
        validation = _Validation(self.paths, base, self.seed)
        trials, seconds = validation.run(candidates, self.device, self.weights, self.progress)
        self.trials += trials
        self.feature_seconds.update(seconds)
        summary = validation.summary()
        if self.summaries:
            self.summaries.setdefault("larger", {})[base.preprocess.label] = summary
        else:
            self.summaries.update(summary)
        return _pick(trials)


def _larger_input(
    config: FitConfig, given: AbstractSet[str], pose: PoseSpread | None, preprocess: Preprocess
) -> Preprocess | None:
    """The whole frame at up to LARGER px, for photos with the detail for it (a shorter side
    of LARGER_FROM px or more); None where the input is aligned, given or augmented."""
    if pose is None or preprocess.align is not None or given & {"resize", "crop"}:
        return None
    if config.augment != NONE or pose.side < LARGER_FROM:
        return None
    side = min(LARGER, pose.side)
    return replace(preprocess, resize=side, crop=side)


def _resolution(
    search: _Search,
    base: FitConfig,
    given: AbstractSet[str],
    chosen: Trial,
    why: str,
    bigger: Preprocess,
) -> tuple[Trial, str]:
    """The base geometry's choice, or the larger input's where the base misses small
    defects and the larger input catches at least GAIN more; and why."""
    base_input = chosen.preprocess.label
    if chosen.caught_small >= SMALL_CAUGHT:
        return chosen, f"{why}; small ones caught at {base_input}: input kept"
    # The base's backbone only: the larger input costs four times per image.
    config = replace(base, preprocess=bigger, backbone=chosen.candidate.backbone)
    fractions = _fractions(config, given, bigger, search.images, [LARGER_FRACTION])
    scores = [config.image_score] if "image_score" in given else ["max", "top10"]
    candidates = [Candidate(config.backbone, score, f) for f in fractions for score in scores]
    larger, larger_why = search.best(config, candidates)
    low = f"{chosen.caught_small:.0%} of small defects caught at {base_input}"
    if larger.caught >= chosen.caught + GAIN:
        return larger, f"{low}, so {bigger.label} tried: {larger_why}"
    return chosen, (
        f"{why}; {low}, but at {bigger.label} {larger.candidate.name} catches "
        f"{larger.caught:.0%}, not {GAIN:.0%} more: input kept"
    )


def _geometry(
    paths: Sequence[Path], config: FitConfig, given: AbstractSet[str], align: bool
) -> Preprocess:
    """The input: the aligned cut at 512 px per shorter side (the box measured on every
    training image, as make_model.py's --align does), or the configured centre crop (by
    default 256/224); a given size wins. DatasetError when no part is found to align."""
    if not align:
        return replace(config.preprocess, align=None)
    resize = config.preprocess.resize if "resize" in given else ALIGNED_RESIZE
    try:
        box = measure_box(paths)
    except ValueError as error:
        raise DatasetError(str(error)) from None
    return replace(config.preprocess, resize=resize, crop=resize, align=box)


def _fractions(
    config: FitConfig,
    given: AbstractSet[str],
    preprocess: Preprocess,
    images: int,
    searched: list[float | None],
) -> list[float | None]:
    """The coreset fractions to validate: the given one; else, for images whose patches
    at this input number FULL_BANK_PATCHES or fewer, the library's default rule (None:
    every patch); else, for fewer than FEW images, the share that keeps FULL_BANK_PATCHES
    rows (the bank the default rule allows); else `searched`. A small share of a few
    images' patches is a bank whose held-out scores promise fewer false alarms than new
    images give (bench/flags.py --shots)."""
    if "coreset" in given:
        return [config.coreset]
    width, height = preprocess.size
    patches = images * (width // FINEST_STRIDE) * (height // FINEST_STRIDE)
    if patches <= FULL_BANK_PATCHES:
        return [None]
    if images < FEW:
        return [float(f"{FULL_BANK_PATCHES / patches:.3g}")]
    return list(searched)


def _candidates(
    config: FitConfig, given: AbstractSet[str], preprocess: Preprocess, images: int
) -> list[Candidate]:
    """The searched grid in order of preference on a tie: cheaper first (Lite0 before Lite2,
    the smaller bank first), then the image score of today's default (fixed pose) or of the
    README's screw recipe (aligned). A 1% bank is tried only for inputs larger than the
    default's, whose banks grow with their patches."""
    backbones = searched_backbones(config, given)
    if "image_score" in given:
        scores = [config.image_score]
    else:
        scores = ["top10", "max"] if preprocess.align is not None else ["max", "top10"]
    width, height = preprocess.size
    larger = width * height > FIXED_POSE.crop**2
    fractions = _fractions(config, given, preprocess, images, [0.01, 0.1] if larger else [None])
    return [
        Candidate(backbone, score, fraction)
        for fraction in fractions
        for backbone in backbones
        for score in scores
    ]


def _with(config: FitConfig, candidate: Candidate) -> FitConfig:
    return replace(
        config,
        backbone=candidate.backbone,
        image_score=candidate.image_score,
        coreset=candidate.coreset_fraction,
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

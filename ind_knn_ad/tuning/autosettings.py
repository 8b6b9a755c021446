"""Fit settings chosen from good training images alone, for users who do not know the recipe.

The defaults miss small defects on parts that lie anywhere (screws); the recipe that fixes
them (`--align --image-size 512 --coreset 0.01 --image-score top10`) ruins parts whose pose
is itself checked (a transistor turned or moved). So the choice has two steps:

1. **Alignment, from the data.** Align where the training parts lie in varied poses: the
   part's long axis points in many directions (counted only for elongated parts, since a
   near-round part's axis is noise), or its centre wanders. A frame whose border is not
   plain background (a texture) is never aligned. Synthetic defects cannot decide this:
   none of them turns or moves a part, so they would never show what alignment hides.
2. **The rest, by validation.** Among a few candidates of that geometry (offline backbone,
   image score, coreset fraction), the one that best separates held-out good images from
   synthetic defects made from them: the share of defects scoring above every held-out good
   image, half of them small (4% of the input's side). Each backbone's features are computed
   once, on a seeded subsample; image scores and bank sizes are variants over them.

`bench/auto_settings.py` measures the pose statistic, the choice and the fits it gives on
every shared set; the thresholds below are set from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table

from ind_knn_ad.calibration.detectability import damaged_inputs
from ind_knn_ad.features.augment import NONE
from ind_knn_ad.features.borders import DEFAULT_BORDER
from ind_knn_ad.features.device import select_device
from ind_knn_ad.features.extractor import (
    FeatureExtractor,
    FitConfig,
    TrainFeatures,
    extract_features,
)
from ind_knn_ad.io.alignment import (
    POSE_LONGEST,
    POSE_SIDE,
    Pose,
    find_pose,
    foreground,
    measure_box,
    part_regions,
)
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.images import load_image
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import ProgressFactory
from ind_knn_ad.methods.patchcore_held_out import HeldOut
from ind_knn_ad.search.coreset import PROJECTION_DIM, coreset_size, greedy_coreset

OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")  # Lite1: see docs/benchmarks.md
FIXED_POSE = Preprocess()  # today's 256/224 centre crop
ALIGNED_RESIZE = 512  # the README's screw recipe
SEARCHED = ("backbone", "image_score", "coreset_fraction", "resize", "crop", "align")
PASSED_ON = ("layers", "neighbourhood", "border", "projection_dim", "augment")

# Pose statistic (bench/auto_settings.py prints it for every shared set).
POSE_IMAGES = 32  # seeded sample of training images whose pose is measured
ELONGATED = 1.5  # median length / breadth from which the long axis counts
TURNED_DEGREES = 20.0  # axial spread of the long axis above which parts count as turned
MOVED = 0.1  # spread of the centre (of the shorter side) above which parts count as moved
PLAIN_BORDER = 0.25  # largest share of frame-border pixels on the part's side of Otsu
FOUND = 0.9  # least share of sampled images in which a part is found

# Validation.
VALIDATION_IMAGES = 32  # seeded subsample whose features each backbone computes once
DAMAGED_IMAGES = 10  # of them, damaged with every synthetic kind at every size
SIZES = (0.04, 0.1)  # defect sizes, fractions of the input's shorter side; larger ones
# are caught by every candidate and would only hide the differences
TIE = 0.05  # a cheaper candidate within this share of the best's catch rate wins


def no_progress(description: str, total: int) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass(frozen=True)
class PoseSpread:
    """How the training parts lie, over a seeded sample of training images.

    `elongation` is the median length / breadth; `axis_spread` the axial circular standard
    deviation of the long axis in degrees (the axis without its direction, so 0 and 180
    are one pose; 90 stands for any angle), `None` for parts too round for an axis; `centre`
    the spread of the part's centre as a fraction of the shorter side; `border` the share of
    frame-border pixels on the part's side of Otsu's threshold (0 on a plain background).
    """

    images: int
    found: int
    elongation: float
    axis_spread: float | None
    centre: float
    border: float

    @property
    def plain(self) -> bool:
        """Parts on a plain background, found in (nearly) every image: alignment can work."""
        return self.border <= PLAIN_BORDER and self.found >= FOUND * self.images

    @property
    def turned(self) -> bool:
        return self.axis_spread is not None and self.axis_spread >= TURNED_DEGREES

    @property
    def moved(self) -> bool:
        return self.centre >= MOVED

    @property
    def varied(self) -> bool:
        """Align: the parts lie in varied poses on a plain background."""
        return self.plain and (self.turned or self.moved)

    def summary(self) -> str:
        axis = "n/a (round)" if self.axis_spread is None else f"{self.axis_spread:.1f} deg"
        return (
            f"parts found in {self.found}/{self.images}, elongation {self.elongation:.2f}, "
            f"axis spread {axis}, centre spread {self.centre:.3f}, border {self.border:.3f}"
        )

    def reason(self) -> str:
        if not self.plain:
            return "no part on a plain background in every image: not aligned"
        if self.turned:
            return f"long axis spread {self.axis_spread:.0f} deg >= {TURNED_DEGREES:g}: aligned"
        if self.moved:
            return f"centre spread {self.centre:.2f} >= {MOVED:g} of the frame: aligned"
        return "parts lie in one pose: not aligned"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "found": self.found,
            "elongation": round(self.elongation, 4),
            "axis_spread_degrees": None if self.axis_spread is None else round(self.axis_spread, 2),
            "centre_spread": round(self.centre, 4),
            "border_share": round(self.border, 4),
            "align": self.varied,
        }


def _sample(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most `limit` of `count` items."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def border_share(image: Image.Image) -> float:
    """The share of the frame's border pixels on the part's side of Otsu's threshold, on the
    same small grey copy the pose is found on: about half for a texture, 0 for a part on a
    plain background."""
    width, height = image.size
    scale = min(POSE_SIDE / min(width, height), POSE_LONGEST / max(width, height))
    grey = image.convert("L").resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
    )
    mask = foreground(np.asarray(grey))
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return float(edge.mean())


def pose_spread(
    paths: Sequence[Path | str], seed: int = 0, images: int = POSE_IMAGES, workers: int = 2
) -> PoseSpread:
    """The pose statistic of a seeded sample of at most `images` training images."""

    def measure(path: Path | str) -> tuple[Pose, float, int]:
        image = load_image(path)
        return find_pose(image), border_share(image), min(image.size)

    chosen = [paths[i] for i in _sample(len(paths), images, seed)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        measured = list(pool.map(measure, chosen))
    border = float(np.mean([share for _, share, _ in measured]))
    found = [(pose, side) for pose, _, side in measured if pose.length > 0]
    if len(found) < 2:
        return PoseSpread(len(chosen), len(found), 0.0, None, 0.0, border)
    poses = [pose for pose, _ in found]
    elongation = float(np.median([p.length / max(p.breadth, 1e-9) for p in poses]))
    axis_spread = None
    if elongation >= ELONGATED:
        # Doubled angles make the axis directionless; R is their mean resultant length.
        resultant = abs(np.mean(np.exp(2j * np.array([p.angle for p in poses]))))
        spread = math.sqrt(-2.0 * math.log(max(resultant, 1e-12))) / 2.0
        axis_spread = min(90.0, math.degrees(spread))
    centres = np.array([[x / side, y / side] for (x, y), side in ((p.centre, s) for p, s in found)])
    centre = float(np.sqrt(centres.var(axis=0).sum()))
    return PoseSpread(len(chosen), len(found), elongation, axis_spread, centre, border)


@dataclass(frozen=True)
class Candidate:
    """One searched combination; the geometry is the same for every candidate of a choice."""

    backbone: str
    image_score: str
    coreset_fraction: float | None  # None: the library's default rule (coreset_size)

    @property
    def name(self) -> str:
        fraction = "default" if self.coreset_fraction is None else f"{self.coreset_fraction:g}"
        return f"{self.backbone} {self.image_score} {fraction}"


@dataclass(frozen=True)
class Trial:
    """A candidate's validation figures: `caught` is the share of synthetic defects scoring
    above every held-out good image (`caught_small`: the 4% ones alone), `auroc` the ROC
    AUC of defects against held-out good images, `seconds` its bank and scoring time
    (its backbone's features are counted once, in `Choice.feature_seconds`)."""

    candidate: Candidate
    caught: float
    caught_small: float
    auroc: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.candidate.name,
            "backbone": self.candidate.backbone,
            "image_score": self.candidate.image_score,
            "coreset_fraction": self.candidate.coreset_fraction,
            "caught": round(self.caught, 4),
            "caught_small": round(self.caught_small, 4),
            "auroc": round(self.auroc, 4),
            "seconds": round(self.seconds, 2),
        }


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


def _auroc(defects: np.ndarray, good: np.ndarray) -> float:
    """P(defect score > good score), ties counting half."""
    greater = (defects[:, None] > good[None, :]).mean()
    equal = (defects[:, None] == good[None, :]).mean()
    return float(greater + equal / 2)


class _Validation:
    """Held-out good images and synthetic defects of a seeded subsample, for one geometry.

    The defects are made once, on the cut the network sees, and shared by every candidate.
    Each image (and its damaged copies) is scored against the subsample's bank without that
    image's patches, their holes filled: the held-out rule of the automatic threshold
    (`methods.patchcore_held_out`), so candidates are compared on the scores the threshold
    is placed on.
    """

    def __init__(self, paths: Sequence[Path], base: FitConfig, seed: int) -> None:
        self.base = base
        self.total = len(paths)
        self.paths = [paths[i] for i in _sample(len(paths), VALIDATION_IMAGES, seed)]
        shorter = min(base.preprocess.size)
        self.sizes = sorted({max(1, round(fraction * shorter)) for fraction in SIZES})
        rng = np.random.default_rng(seed)
        arrays, cuts, self.small, sources = [], [], [], []
        for image in _sample(len(self.paths), DAMAGED_IMAGES, seed + 1):
            damaged, damaged_cuts, labels = damaged_inputs(
                Path(self.paths[image]), base.preprocess, self.sizes, rng
            )
            arrays.append(damaged)
            cuts.append(damaged_cuts)
            self.small += [size == self.sizes[0] for _, size in labels]
            sources += [int(image)] * len(labels)
        self.damaged = np.concatenate(arrays)
        self.damaged_cuts = np.concatenate(cuts)  # part regions are found on these
        self.sources = np.asarray(sources)
        self.small = np.asarray(self.small)

    def summary(self) -> dict[str, Any]:
        return {
            "images": len(self.paths),
            "of": self.total,
            "damaged_images": len(np.unique(self.sources)),
            "defects": len(self.damaged),
            "defect_sizes_px": self.sizes,
        }

    def bank_size(self, fraction: float | None, patches: int) -> int:
        """Rows of the subsample's bank for `fraction`: as many as the full fit would keep,
        within the subsample's patches, and more than one image's (so no image's held-out
        bank is empty). Beyond half the patches, all: greedy ordering costs time quadratic
        in the rows and would change little."""
        rows = len(self.paths) * patches
        size = min(rows, max(patches + 1, coreset_size(self.total * patches, fraction)))
        return rows if size >= rows / 2 else size

    def run(
        self,
        candidates: list[Candidate],
        device: str,
        weights: Path | None,
        progress: ProgressFactory,
    ) -> tuple[list[Trial], dict[str, float]]:
        """Every candidate's trial, and each backbone's shared seconds (features, bank)."""
        torch_device = select_device(device)
        trials: dict[Candidate, Trial] = {}
        shared: dict[str, float] = {}
        preprocess = self.base.preprocess
        for backbone in dict.fromkeys(candidate.backbone for candidate in candidates):
            start = time.perf_counter()
            extractor = FeatureExtractor(
                replace(self.base, backbone=backbone), torch_device, weights
            )
            batch = images_per_batch(preprocess.size, 16, extractor.workers)
            good = len(self.paths)
            with progress(f"Choosing: {backbone}", good + len(self.damaged)) as callback:
                # Without the views of `augment`: they would multiply every candidate's time
                # by their count, and the fit adds them to whichever candidate wins.
                train = extract_features(extractor, self.paths, preprocess, batch, callback)
                damaged = []
                for first in range(0, len(self.damaged), batch):
                    damaged.append(extractor(self.damaged[first : first + batch]))
                    if callback is not None:
                        callback(good + first + len(damaged[-1]))
            mine = [candidate for candidate in candidates if candidate.backbone == backbone]
            trials.update(self._score(train, np.concatenate(damaged), mine, start, shared))
        return [trials[candidate] for candidate in candidates], shared

    def _score(
        self,
        train: TrainFeatures,
        damaged: np.ndarray,
        candidates: list[Candidate],
        start: float,
        shared: dict[str, float],
    ) -> dict[Candidate, Trial]:
        images, patches, channels = train.features.shape
        flat = train.features.reshape(-1, channels)
        sizes = {
            c.coreset_fraction: self.bank_size(c.coreset_fraction, patches) for c in candidates
        }
        partial = [size for size in sizes.values() if size < len(flat)]
        # Greedy order is incremental: a smaller bank is a prefix of a larger one.
        order = (
            greedy_coreset(flat, max(partial), self.base.projection_dim, self.base.seed)
            if partial
            else None
        )
        shared[candidates[0].backbone] = time.perf_counter() - start
        good = {c: np.empty(images) for c in candidates}
        defects = {c: np.empty(len(damaged)) for c in candidates}
        seconds = dict.fromkeys(candidates, 0.0)
        for fraction, size in sizes.items():
            rows = np.arange(len(flat)) if size == len(flat) or order is None else order[:size]
            mine = [c for c in candidates if c.coreset_fraction == fraction]
            held = HeldOut(train.features, flat[rows], rows // patches, self.base.seed)
            for image, features, regions in self._inputs(train, damaged):
                began = time.perf_counter()
                for candidate in mine:  # built here and kept for every candidate's scores
                    held.bank_without(image, candidate.image_score)
                made = time.perf_counter() - began
                own = self.sources == image
                for candidate in mine:
                    began = time.perf_counter()
                    scores = held.scores(features, image, candidate.image_score, regions)
                    good[candidate][image], defects[candidate][own] = scores[0], scores[1:]
                    seconds[candidate] += made + time.perf_counter() - began
        return {c: self._trial(c, good[c], defects[c], seconds[c]) for c in candidates}

    def _inputs(
        self, train: TrainFeatures, damaged: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Per subsample image: its (B, C, h, w) features, first its own and then its
        damaged copies', and the patches counted on each (the part, where aligned)."""
        images, _patches, channels = train.features.shape
        good = train.features.reshape(images, *train.grid, channels).transpose(0, 3, 1, 2)
        damaged_regions = None
        if train.regions is not None:
            damaged_regions = part_regions(self.damaged_cuts, train.grid)
        for image in range(images):
            own = self.sources == image
            features = np.concatenate([good[image : image + 1], damaged[own]])
            regions = None
            if damaged_regions is not None:
                counted = train.regions[image].reshape(1, *train.grid)
                regions = np.concatenate([counted, damaged_regions[own]])
            yield image, features, regions

    def _trial(
        self, candidate: Candidate, good: np.ndarray, defects: np.ndarray, seconds: float
    ) -> Trial:
        above = defects > good.max()
        auroc = _auroc(defects, good)
        return Trial(
            candidate, float(above.mean()), float(above[self.small].mean()), auroc, seconds
        )

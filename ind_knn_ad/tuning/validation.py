"""Validation of the automatic settings' candidates: held-out good images of a seeded
subsample against synthetic defects made from them (`autosettings` step 2)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ind_knn_ad.calibration.detectability import damaged_inputs
from ind_knn_ad.config import BATCH_IMAGES, FitConfig
from ind_knn_ad.features.device import select_device
from ind_knn_ad.features.extractor import FeatureExtractor, TrainFeatures, extract_features
from ind_knn_ad.io.alignment import part_regions
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.fitting import ProgressFactory
from ind_knn_ad.methods.patchcore.held_out import HeldOut
from ind_knn_ad.search.coreset import coreset_size, greedy_coreset, seeded_sample

VALIDATION_IMAGES = 32  # seeded subsample whose features each backbone computes once
DAMAGED_IMAGES = 10  # of them, damaged with every synthetic kind at every size
SIZES = (0.04, 0.1)  # defect sizes, fractions of the input's shorter side; larger ones
# are caught by every candidate and would only hide the differences


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
    """A candidate's validation figures on one input geometry (`preprocess`): `caught` is
    the share of synthetic defects scoring above every held-out good image (`caught_small`:
    the 4% ones alone), `auroc` the ROC AUC of defects against held-out good images,
    `seconds` its bank and scoring time (its backbone's features are counted once, in
    `Choice.feature_seconds`), `by_kind` the catch rate of each synthetic kind (which
    kinds a candidate sees; bench/validation_real.py ranks them against real defects)."""

    candidate: Candidate
    preprocess: Preprocess
    caught: float
    caught_small: float
    auroc: float
    seconds: float
    by_kind: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.candidate.name,
            "input": self.preprocess.label,
            "backbone": self.candidate.backbone,
            "image_score": self.candidate.image_score,
            "coreset_fraction": self.candidate.coreset_fraction,
            "caught": round(self.caught, 4),
            "caught_small": round(self.caught_small, 4),
            "auroc": round(self.auroc, 4),
            "seconds": round(self.seconds, 2),
            "by_kind": {kind: round(rate, 4) for kind, rate in self.by_kind.items()},
        }


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
    (`methods.patchcore.held_out`), so candidates are compared on the scores the threshold
    is placed on.
    """

    def __init__(self, paths: Sequence[Path], base: FitConfig, seed: int) -> None:
        self.base = base
        self.total = len(paths)
        self.paths = [paths[i] for i in seeded_sample(len(paths), VALIDATION_IMAGES, seed)]
        shorter = min(base.preprocess.size)
        self.sizes = sorted({max(1, round(fraction * shorter)) for fraction in SIZES})
        rng = np.random.default_rng(seed)
        arrays, cuts, self.small, sources, kinds = [], [], [], [], []
        for image in seeded_sample(len(self.paths), DAMAGED_IMAGES, seed + 1):
            damaged, damaged_cuts, labels = damaged_inputs(
                Path(self.paths[image]), base.preprocess, self.sizes, rng
            )
            arrays.append(damaged)
            cuts.append(damaged_cuts)
            self.small += [size == self.sizes[0] for _, size in labels]
            kinds += [kind for kind, _ in labels]
            sources += [int(image)] * len(labels)
        self.damaged = np.concatenate(arrays)
        self.damaged_cuts = np.concatenate(cuts)  # part regions are found on these
        self.sources = np.asarray(sources)
        self.small = np.asarray(self.small)
        self.kinds = np.asarray(kinds)

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
        size = min(rows, max(patches + 1, coreset_size(self.total * patches, fraction, patches)))
        return rows if size >= rows / 2 else size

    def run(
        self,
        candidates: list[Candidate],
        device: str,
        weights: Path | None,
        progress: ProgressFactory,
    ) -> tuple[list[Trial], dict[str, float]]:
        """Every candidate's trial, and each backbone's shared seconds (features, bank), by
        backbone and input."""
        torch_device = select_device(device)
        trials: dict[Candidate, Trial] = {}
        shared: dict[str, float] = {}
        preprocess = self.base.preprocess
        for backbone in dict.fromkeys(candidate.backbone for candidate in candidates):
            start = time.perf_counter()
            extractor = FeatureExtractor(
                replace(self.base, backbone=backbone), torch_device, weights
            )
            batch = images_per_batch(preprocess.size, BATCH_IMAGES, extractor.workers)
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
        # Greedy order is incremental: a smaller bank is a prefix of a larger one (in two
        # stages, a prefix of the second stage's order over the same union).
        order = (
            greedy_coreset(
                flat, max(partial), self.base.projection_dim, self.base.seed, image_rows=patches
            )
            if partial
            else None
        )
        shared[f"{candidates[0].backbone} {self.base.preprocess.label}"] = (
            time.perf_counter() - start
        )
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
            candidate,
            self.base.preprocess,
            float(above.mean()),
            float(above[self.small].mean()),
            auroc,
            seconds,
            {str(kind): float(above[self.kinds == kind].mean()) for kind in np.unique(self.kinds)},
        )

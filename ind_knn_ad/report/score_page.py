"""`anomaly_detector.py --report FILE.html`: one self-contained page of a scoring run, for a
CI job to publish: the counts, a histogram of the scores against the threshold, the flagged
images first with their maps, then every image's score.

Imported only with --report: matplotlib and Jinja2 stay off a plain scoring call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from markupsafe import Markup
from PIL import Image

from ind_knn_ad import methods
from ind_knn_ad.io.atomic import atomic_write
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.report import pictures
from ind_knn_ad.report.heatmap import anomaly_map

MAX_SHOWN = 100  # flagged images drawn with their maps; the rest are listed by score


@dataclass
class Scored:
    """One scored file: the score as printed, its flag, and its pictures when flagged."""

    name: str
    score: float
    flag: int
    plain: str = ""
    map: str = ""


class ScoreReport:
    """Collects a scoring run image by image (only the flagged ones' pictures are kept,
    the first MAX_SHOWN), then writes the page."""

    def __init__(
        self, model: Model, model_path: Path, preprocess: Preprocess, threshold: float
    ) -> None:
        self.model, self.model_path = model, model_path
        self.preprocess, self.threshold = preprocess, threshold
        self.units = methods.find(model.method).map_in_score_units
        self.scored: list[Scored] = []
        self.failed: list[str] = []
        self.drawn = 0

    def add(self, path: Path | str, result: PatchScores, cut: np.ndarray, score: float, flag: int):
        """Record one image; draw it (as the model saw it, plain and with its map) when it
        is flagged. Not the photo as taken: scoring decodes each file once."""
        item = Scored(os.fsdecode(path), score, flag)
        if flag and self.drawn < MAX_SHOWN:
            amap = anomaly_map(result.patch_map, self.preprocess.size)
            span = pictures.scale_of([amap], self.threshold, self.units)
            outline = self.threshold if self.units else None
            picture = pictures.map_picture(cut, amap, span, outline, None, pictures.PANEL // 2)
            item.map = pictures.data_uri(picture)
            plain = Image.fromarray(cut).resize(picture.size, Image.Resampling.BICUBIC)
            item.plain = pictures.data_uri(plain)
            self.drawn += 1
        self.scored.append(item)

    def fail(self, path: Path | str) -> None:
        self.failed.append(os.fsdecode(path))

    def html(self) -> bytes:
        """The page, as UTF-8 bytes."""
        from ind_knn_ad.report import figures
        from ind_knn_ad.report.render import render

        scores = np.array([item.score for item in self.scored])
        flags = np.array([item.flag for item in self.scored], bool)
        groups = {"passed": scores[~flags], "flagged": scores[flags]}
        label = f"{self.model.method} score"
        histogram = figures.histogram(groups, self.threshold, None, label, neutral="passed")
        ranked = sorted(self.scored, key=lambda item: -item.score)
        span = pictures.anchored_range(self.threshold) if self.units else None
        context = {
            "title": f"Scoring run: {len(self.scored)} images",
            "model": os.fsdecode(self.model_path),
            "method": self.model.method,
            "threshold": self.threshold,
            "flagged": [item for item in ranked if item.flag],
            "passed": [item for item in ranked if not item.flag],
            "failed": self.failed,
            "histogram": Markup(histogram),
            "colour_bar": Markup(figures.colour_bar(span, self.threshold, "map value"))
            if span
            else "",
        }
        return render("score.html", context)

    def write(self, target: Path) -> None:
        """Write the page atomically: a reader never sees half of it."""
        atomic_write(target, self.html())

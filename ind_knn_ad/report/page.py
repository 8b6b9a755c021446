"""`<model>.report.html`: the sign-off page of a fit or an evaluation, one file that opens
offline (every image embedded, no script, no font or style from the network).

It answers what a person signing a model off asks: how many errors at the stored threshold
and how close it is (histograms on the model's own scale), where the model fails (misses and
false alarms first, at a readable size, the photo beside its map and outlines), what the map
means (one colour scale anchored to the threshold) and whether the threshold can be trusted.
Jinja2 renders `templates/fit.html`; matplotlib draws the plots (`figures.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup
from sklearn.metrics import precision_recall_curve, roc_curve

from ind_knn_ad import methods
from ind_knn_ad.calibration.operating_point import few_labels_warning
from ind_knn_ad.errors import ImageError
from ind_knn_ad.io.datasets import GOOD
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.report import figures, pictures
from ind_knn_ad.report.evaluate import Evaluation, mask_labels
from ind_knn_ad.report.heatmap import SheetEntry, anomaly_map
from ind_knn_ad.report.metrics import PRO_MAX_FPR
from ind_knn_ad.report.render import render

if TYPE_CHECKING:
    from ind_knn_ad.report.results import SheetCollector

log = logging.getLogger(__name__)
MAX_WRONG = 60  # misses and false alarms shown full size; the rest only in the grid
TILE_QUALITY = 70  # WebP quality of grid tiles: 1,000 of them stay under 20 MB (bench/report.py)


@dataclass
class Shown:
    """One test image on the page: its grid tile, and for a wrong verdict the photo and
    the map at full size."""

    name: str
    defect_type: str
    score: float
    flagged: bool
    tile: str
    index: int  # in SheetCollector's lists
    photo: str = ""
    map: str = ""
    outlined_truth: bool = False

    @property
    def wrong(self) -> bool:
        return self.flagged != (self.defect_type != GOOD)

    @property
    def verdict(self) -> str:
        if self.wrong:
            return "false alarm" if self.flagged else "miss"
        return "defective" if self.flagged else "good"


def tiles(
    entries: list[SheetEntry], span: tuple[float, float], threshold: float, units: bool
) -> list[Shown]:
    """Every image as a small tile (its cut with the map over it), highest score first."""
    shown = []
    for index, entry in sorted(enumerate(entries), key=lambda pair: -pair[1].score):
        picture = pictures.map_picture(
            np.asarray(entry.image), entry.amap, span, threshold if units else None
        )
        tile = pictures.data_uri(picture, TILE_QUALITY)
        flagged = entry.score >= threshold
        shown.append(Shown(entry.name, entry.defect_type, entry.score, flagged, tile, index))
    return shown


def _enlarge(
    shown: Shown, sheet: SheetCollector, span: tuple[float, float], outline: float | None
) -> None:
    """Add the photo and the full-size map to a wrong verdict: the file is decoded again
    (a few images, not the test set), its map comes from the evaluation. A file gone
    unreadable since then keeps its tile alone, with a warning: the fit is still saved."""
    item, patch_map = sheet.images[shown.index]
    preprocess = sheet.preprocess
    try:
        prepared = preprocess.prepare_file(item.path)
        taken = pictures.photo(item.path)
    except ImageError as error:
        log.warning("warning: %s; shown in the report's grid only", error)
        return
    truth = None
    if item.mask is not None:
        labels = mask_labels(item.mask, prepared, preprocess)
        if labels is not None:
            truth = labels.reshape(prepared.cut.shape[:2])
    amap = anomaly_map(patch_map, preprocess.size)
    picture = pictures.map_picture(prepared.cut, amap, span, outline, truth, pictures.PANEL)
    shown.map = pictures.data_uri(picture)
    shown.photo = pictures.data_uri(taken)
    shown.outlined_truth = truth is not None


def _counts(evaluation: Evaluation) -> dict[str, Any]:
    (tn, fp), (fn, tp) = evaluation.confusion_matrix
    return {
        "good": tn + fp,
        "defective": fn + tp,
        "false_alarms": fp,
        "misses": fn,
        "errors": fp + fn,
        "matrix": evaluation.confusion_matrix,
        "better": evaluation.better_cut(),
    }


def _threshold(model: Model) -> dict[str, Any]:
    """The stored threshold's rule, bound and origin, as recorded in the model."""
    record = model.settings["threshold"]
    replaced = record.get("replaced")
    return {
        "value": model.threshold,
        "rule": record["rule"],
        "expected": record.get("expected_false_alarms"),
        "labelled": record.get("labelled"),
        "replaced": replaced,
        "warning": few_labels_warning(record),
    }


def _settings(model: Model) -> dict[str, Any]:
    """The automatic settings' choice and candidates, or the fixed settings given."""
    keys = ("method", "backbone", "layers", "image_score", "neighbourhood", "border")
    fixed = {key: model.settings[key] for key in keys if key in model.settings}
    fixed["train images"] = model.settings.get("train_images")
    fixed["input"] = model.settings.get("preprocess")
    return {"auto": model.settings.get("auto_settings"), "fixed": fixed}


def _detectability(model: Model) -> dict[str, Any] | None:
    """The synthetic defects caught at the fit's threshold, by kind and size."""
    rows = model.settings.get("detectability")
    if not rows:
        return None
    sizes = sorted({row["size_px"] for row in rows})
    cells = {(row["defect"], row["size_px"]): row for row in rows}
    kinds = list(dict.fromkeys(row["defect"] for row in rows))
    table = [[kind, *(cells.get((kind, size)) for size in sizes)] for kind in kinds]
    record = model.settings["threshold"]
    return {"sizes": sizes, "rows": table, "threshold": record.get("replaced", record)["value"]}


def _plots(evaluation: Evaluation, units: str) -> dict[str, Markup]:
    """The histogram and the curves, as inline SVG."""
    groups: dict[str, list[float]] = {}
    for image in sorted(evaluation.images, key=lambda i: i["defect_type"] != GOOD):
        groups.setdefault(image["defect_type"], []).append(image["score"])
    arrays = {name: np.asarray(scores) for name, scores in groups.items()}
    best = evaluation.best_f1_threshold if evaluation.image_rocauc is not None else None
    plots = {"histogram": figures.histogram(arrays, evaluation.threshold, best, units)}
    if evaluation.image_rocauc is not None:
        plots["curves"] = figures.curves(_curves(evaluation))
    return {name: Markup(svg) for name, svg in plots.items()}


def _curves(evaluation: Evaluation) -> list[figures.Curve]:
    """Image ROC and precision-recall, then the pixel ROC and PRO curves where masks gave
    them (sampled in the evaluation)."""
    labels = np.array([i["defect_type"] != GOOD for i in evaluation.images], int)
    scores = np.array([i["score"] for i in evaluation.images])
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    panels = [
        figures.Curve("Image ROC", "false-alarm rate", "recall", fpr, tpr),
        figures.Curve("Image precision-recall", "recall", "precision", recall, precision),
    ]
    titles = {
        "pixel_roc": ("Pixel ROC", "false-positive rate", "true-positive rate"),
        "pro": (f"PRO (FPR to {PRO_MAX_FPR})", "false-positive rate", "per-region overlap"),
    }
    for name, points in evaluation.curves.items():
        x, y = np.asarray(points).T
        panels.append(figures.Curve(*titles[name], x, y))
    return panels


def fit_report(
    model: Model, evaluation: Evaluation, sheet: SheetCollector, dataset: str, digest: str
) -> bytes:
    """The page, as UTF-8 bytes, for `evaluation` of `model` (SHA-256 `digest`) on `dataset`."""
    units = methods.find(model.method).map_in_score_units
    threshold = evaluation.threshold
    span = pictures.scale_of([entry.amap for entry in sheet.entries], threshold, units)
    shown = tiles(sheet.entries, span, threshold, units)
    wrong = [item for item in shown if item.wrong]
    for item in wrong[:MAX_WRONG]:
        _enlarge(item, sheet, span, threshold if units else None)
    score_label = f"{model.method} score ({model.settings.get('image_score', 'max')})"
    context = {
        "title": f"{model.method} on {dataset}",
        "dataset": dataset,
        "digest": digest,
        "evaluation": evaluation,
        "counts": _counts(evaluation),
        "threshold": _threshold(model),
        "settings": _settings(model),
        "detectability": _detectability(model),
        "plots": _plots(evaluation, score_label),
        "colour_bar": Markup(
            figures.colour_bar(span, threshold if units else None, "map value (score units)")
        ),
        "units": units,
        "wrong": wrong[:MAX_WRONG],
        "wrong_left": max(0, len(wrong) - MAX_WRONG),
        "flagged": [item for item in shown if item.flagged],
        "passed": [item for item in shown if not item.flagged],
    }
    return render("fit.html", context)

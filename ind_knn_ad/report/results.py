"""What an evaluation leaves beside its model: `<model>.results.json`,
`<model>.contact_sheet.png` and the sign-off page `<model>.report.html` (`<model>`: the
file's whole name, less a `.safetensors` suffix; `side_files.beside` names them), made
while the test set is scored, and the evaluation of a saved model (make_model.py
--evaluate-only), named `<model>.results.<dataset>.json` and so on when on a dataset other
than the fit's.

All name their model by its SHA-256 (`model_sha256`: a JSON field, a PNG text chunk, the
page's header), so files that do not match their model can be told.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ind_knn_ad.calibration.operating_point import OperatingPoint, recalibrate
from ind_knn_ad.errors import DatasetError, WriteError
from ind_knn_ad.io.atomic import write_together
from ind_knn_ad.io.datasets import Dataset, TestImage
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.model_file.store import load_model, serialise
from ind_knn_ad.report.evaluate import Evaluation, evaluate
from ind_knn_ad.report.heatmap import SheetEntry, contact_sheet, png_bytes, sheet_entry
from ind_knn_ad.report.side_files import beside


def other_dataset(model: Model, dataset: str) -> str | None:
    """`dataset` when the model was fitted on another one (so its evaluation there is kept
    apart from the fit's own), else None."""
    return None if model.settings["dataset"] == dataset else dataset


class SheetCollector:
    """Gathers the contact sheet's cells, and each image's patch map for the report, while
    the test set is evaluated (an `each` callback), so no test image is scored twice."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess
        self.entries: list[SheetEntry] = []
        self.images: list[tuple[TestImage, np.ndarray]] = []  # with each entry, its map

    def __call__(self, item: TestImage, result: PatchScores, cut: np.ndarray) -> None:
        self.images.append((item, result.patch_map))
        self.entries.append(
            sheet_entry(
                item.path, cut, result.patch_map, self.preprocess, result.score, item.defect_type
            )
        )


def evaluation_files(
    model_path: Path,
    model_bytes: bytes,
    evaluation: Evaluation,
    sheet: SheetCollector,
    model: Model,
    threshold: float,
    dataset: str,
) -> list[tuple[Path, bytes]]:
    """The results file, the contact sheet and the report, as (path, bytes)."""
    from ind_knn_ad.report.page import fit_report  # matplotlib and Jinja2: only here

    entries = sheet.entries
    digest = hashlib.sha256(model_bytes).hexdigest()
    results = {
        "model_sha256": digest,
        **evaluation.to_dict(),
        "threshold_rule": model.settings["threshold"],
    }
    if "detectability" in model.settings:
        results["detectability"] = model.settings["detectability"]
    title = (
        f"{model.method} on {dataset}: {len(entries)} test images by score, "
        f"threshold {threshold:.4g}; red captions: wrong verdicts"
    )
    results_path, sheet_path, report_path = beside(model_path, other_dataset(model, dataset))
    return [
        (results_path, (json.dumps(results, indent=2) + "\n").encode()),
        (sheet_path, png_bytes(contact_sheet(entries, threshold, title), {"model_sha256": digest})),
        (report_path, fit_report(model, evaluation, sheet, dataset, digest)),
    ]


def write_fit(
    model_path: Path,
    model: Model,
    evaluation: Evaluation | None,
    sheet: SheetCollector,
    dataset: str,
) -> None:
    """Write a fitted model, and its results file, contact sheet and report when evaluated,
    as one unit: an interrupt leaves all the old files or all the new ones."""
    payload = serialise(model)
    files = [(model_path, payload)]
    if evaluation is not None:
        files += evaluation_files(
            model_path, payload, evaluation, sheet, model, model.threshold, dataset
        )
    try:
        write_together(files)
    except OSError as error:
        raise WriteError(f"cannot write {model_path}: {error}") from error


@dataclass
class SavedEvaluation:
    """A saved model's evaluation, at the threshold it was evaluated at."""

    model: Model
    evaluation: Evaluation
    threshold: float
    sheet: SheetCollector


def evaluate_saved(
    model_path: Path,
    dataset: Dataset,
    device: str,
    threshold: float | None,
    batch_size: int | None,
    loaded: Callable[[Model], None],
) -> SavedEvaluation:
    """Evaluate a model file on the dataset's test/ with the graph it carries, exactly as
    scoring runs, at `threshold` (None: the model's); `loaded` sees the model before the
    test images are scored. DatasetError without test/."""
    from ind_knn_ad.runtime.detector import Detector

    if not dataset.test:
        raise DatasetError(f"{dataset.root}: no test/ folder to evaluate on")
    model = load_model(model_path)
    detector = Detector(model, device)
    loaded(model)
    threshold = model.threshold if threshold is None else threshold
    sheet = SheetCollector(detector.preprocess)
    evaluation = evaluate(
        detector.score_arrays,
        dataset,
        detector.preprocess,
        threshold,
        batch_size or detector.batch_size,
        each=sheet,
    )
    return SavedEvaluation(model, evaluation, threshold, sheet)


def write_saved(model_path: Path, saved: SavedEvaluation, dataset: str) -> None:
    """The results file, contact sheet and report of an evaluated model file, beside it."""
    try:
        files = evaluation_files(
            model_path,
            model_path.read_bytes(),
            saved.evaluation,
            saved.sheet,
            saved.model,
            saved.threshold,
            dataset,
        )
        write_together(files)
    except OSError as error:
        raise WriteError(f"cannot write results beside {model_path}: {error}") from error


def recalibrate_saved(
    model_path: Path, saved: SavedEvaluation, point: OperatingPoint, dataset: Dataset
) -> tuple[Model, Evaluation]:
    """The saved model with its threshold set at `point` from its evaluation's labelled
    images, written back with its results and sheet: no refit, nothing else changed."""
    model, evaluation = recalibrate(saved.model, saved.evaluation, point, dataset)
    write_fit(model_path, model, evaluation, saved.sheet, dataset.name)
    return model, evaluation

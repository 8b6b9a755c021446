"""What make_model.py shows people: progress bars and the results table (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ind_knn_ad.calibration.operating_point import few_labels_warning
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.report.evaluate import Evaluation


@contextmanager
def progress_bar(console: Console, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar for one stage; yields a callback taking the number of items done so far."""
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)


def _metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def results_tables(category: str, evaluation: Evaluation, method: str) -> list[Table]:
    """The reference layout: metrics, then actual good/defective by predicted good/defective."""
    metrics = Table(title=None)
    metrics.add_column(f"Test results {category}")
    metrics.add_column("image_rocauc", justify="right")
    metrics.add_column("pixel_rocauc", justify="right")
    metrics.add_row(method, _metric(evaluation.image_rocauc), _metric(evaluation.pixel_rocauc))
    for defect, auc in evaluation.per_defect_rocauc.items():
        metrics.add_row(f"  {defect}", _metric(auc), "")
    (tn, fp), (fn, tp) = evaluation.confusion_matrix
    matrix = Table(title=f"Confusion matrix at threshold {evaluation.threshold:.4g}")
    matrix.add_column("actual \\ predicted")
    matrix.add_column("good", justify="right")
    matrix.add_column("defective", justify="right")
    matrix.add_row("good", str(tn), str(fp))
    matrix.add_row("defective", str(fn), str(tp))
    return [metrics, matrix]


def detectability_table(model: Model) -> Table:
    """Synthetic defects caught at the fit's threshold, by kind (rows) and size (columns);
    the fit's also when an operating point replaced it, since they were counted there."""
    rows = model.settings["detectability"]
    record = model.settings["threshold"]
    threshold = record.get("replaced", record)["value"]
    sizes = sorted({row["size_px"] for row in rows})
    table = Table(title=f"Synthetic defects on held-out good images, caught at {threshold:.4g}")
    table.add_column("defect")
    for size in sizes:
        table.add_column(f"{size} px", justify="right")
    cells = {(row["defect"], row["size_px"]): f"{row['caught']}/{row['tried']}" for row in rows}
    for kind in dict.fromkeys(row["defect"] for row in rows):
        table.add_row(kind, *(cells.get((kind, size), "") for size in sizes))
    return table


def report_pointer(page: str, evaluation: Evaluation) -> str:
    """Where the sign-off page is, and the operating point when a better cut exists."""
    line = f"Report: {page} (misses and false alarms first; open it in a browser)."
    better = evaluation.better_cut()
    if better is not None:
        (_, fp), (fn, _) = evaluation.confusion_matrix
        line += (
            f"\nAt {better['threshold']:.4g} (best F1 on these labelled images): "
            f"{better['false_alarms']} false alarms and {better['misses']} misses instead of "
            f"{fp} and {fn}; make_model.py --evaluate-only --operating-point f1 (or recall=R, "
            "fpr=F) sets the threshold from them without refitting."
        )
    return line


def threshold_warning(model: Model) -> str | None:
    """The warning line when the model's threshold rests on few labelled images."""
    warning = few_labels_warning(model.settings["threshold"])
    return None if warning is None else f"Warning: {warning}"

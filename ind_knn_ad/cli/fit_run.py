"""make_model.py's run, once its options are parsed: the fit (or the evaluation of a
saved model), the printed tables and the written files.

Its own module so that parsing (`cli.fit`) stays light: the fit's modules, torch among
them, load only once the options are known to be good.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from rich.console import Console

from ind_knn_ad.calibration.operating_point import recalibrate
from ind_knn_ad.calibration.threshold import AUTO
from ind_knn_ad.cli import exit_codes, preflight
from ind_knn_ad.cli.fit import FitRequest
from ind_knn_ad.features.device import select_device
from ind_knn_ad.io.datasets import Dataset
from ind_knn_ad.model_file.schema import Model
from ind_knn_ad.report import console as reporting
from ind_knn_ad.report import results
from ind_knn_ad.report.evaluate import Evaluation
from ind_knn_ad.report.results import SheetCollector
from ind_knn_ad.report.summary import fit_summary
from ind_knn_ad.train import train
from ind_knn_ad.tuning import autosettings


def run(request: FitRequest, prepared: preflight.Prepared, console: Console) -> int:
    """Fit (or with --evaluate-only evaluate) what `preflight.prepare` checked, and print;
    errors are raised for run_cli."""
    args, dataset = request.options, prepared.dataset
    out = Console(highlight=False, soft_wrap=True)
    if args.evaluate_only:
        return _evaluate_only(args, dataset, console, out)
    out.print(f"█│ Running {request.config.method} on {dataset.name} dataset.")
    model, evaluation, sheet = _fit(request, prepared, console, out)
    _report_fit(args, dataset, model, evaluation, sheet, console, out)
    return exit_codes.OK


def _evaluate_only(
    args: argparse.Namespace, dataset: Dataset, console: Console, out: Console
) -> int:
    """--evaluate-only: the saved model on test/, recalibrated with --operating-point."""
    saved = results.evaluate_saved(
        args.model,
        dataset,
        args.device,
        None if args.threshold == AUTO else args.threshold,
        args.batch_size,
        partial(_loaded, args.model, dataset.name, console, out),
    )
    if args.operating_point is None:
        out.print(*reporting.results_tables(dataset.name, saved.evaluation, saved.model.method))
        results.write_saved(args.model, saved, dataset.name)
        _point_to_report(args.model, dataset, saved.model, saved.evaluation, console, out)
        return exit_codes.OK
    point = args.operating_point
    model, evaluation = results.recalibrate_saved(args.model, saved, point, dataset)
    out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
    console.print(fit_summary(model))
    out.print(f"Model recalibrated in {args.model}.")
    _point_to_report(args.model, dataset, model, evaluation, console, out)
    return exit_codes.OK


def _point_to_report(
    path: Path,
    dataset: Dataset,
    model: Model,
    evaluation: Evaluation,
    console: Console,
    out: Console,
) -> None:
    """Say where the sign-off page went (and a better cut, if any); warn on stderr when the
    threshold rests on few labelled images."""
    page = results.beside(path, results.other_dataset(model, dataset.name))[2]
    out.print(reporting.report_pointer(str(page), evaluation), markup=False)
    warning = reporting.threshold_warning(model)
    if warning is not None:
        console.print(warning, markup=False)


def _loaded(path: Path, dataset: str, console: Console, out: Console, model: Model) -> None:
    """Say what is evaluated, warning first when the model was fitted on another dataset,
    whose evaluation then goes to side files of its own."""
    if results.other_dataset(model, dataset) is not None:
        fitted = model.settings["dataset"]
        written = " and ".join(side.name for side in results.beside(path, dataset))
        console.print(
            f"Warning: {path} was fitted on dataset {fitted!r}, evaluated here on "
            f"{dataset!r}: its results on {dataset!r} go to {written}, the fit's are kept.",
            markup=False,
        )
    out.print(f"█│ Running {model.method} on {dataset} dataset.")


def _fit(
    request: FitRequest, prepared: preflight.Prepared, console: Console, out: Console
) -> tuple[Model, Evaluation | None, SheetCollector]:
    """The checked configuration (chosen from the images, with automatic settings) fitted
    on the dataset, with the contact sheet's entries."""
    args, dataset, config, plan = request.options, prepared.dataset, prepared.config, prepared.plan
    if args.device == "cuda":
        select_device(args.device)  # CUDA asked for and missing: said before any work
    progress = partial(reporting.progress_bar, console)
    choice = None
    if request.auto:
        with preflight.data_at_fault(dataset):
            choice = autosettings.choose(
                config,
                dataset.train,
                request.given,
                device=args.device,
                progress=progress,
                weights=args.weights,
                larger=args.settings != "quick",
            )
        out.print(choice.table())
        config = choice.config
        plan = preflight.check_fit(dataset, config, args.threshold == AUTO)
    console.print(f"Backbone {config.backbone}; {len(dataset.train)} training images.")
    if plan is not None and plan.streamed:
        console.print(plan.line())
    if not dataset.test:
        console.print("No test/ folder: training only, evaluation skipped.")
    sheet = results.SheetCollector(config.preprocess)
    with preflight.data_at_fault(dataset):
        result = train(
            config,
            dataset,
            threshold=args.threshold,
            device=args.device,
            weights=args.weights,
            batch_size=args.batch_size,
            progress=progress,
            each=sheet,
            stream=None if plan is None else plan.stream,
        )
    if choice is not None:
        result.model.settings["auto_settings"] = choice.to_dict()
    return result.model, result.evaluation, sheet


def _report_fit(
    args: argparse.Namespace,
    dataset: Dataset,
    model: Model,
    evaluation: Evaluation | None,
    sheet: SheetCollector,
    console: Console,
    out: Console,
) -> None:
    """Recalibrate at --operating-point, print the summary and tables, write the files."""
    if args.operating_point is not None and evaluation is not None:
        model, evaluation = recalibrate(model, evaluation, args.operating_point, dataset)
    console.print(fit_summary(model))
    if evaluation is not None:
        out.print(*reporting.results_tables(dataset.name, evaluation, model.method))
    if "detectability" in model.settings:
        out.print(reporting.detectability_table(model))
    results.write_fit(args.model, model, evaluation, sheet, dataset.name)
    out.print(f"Model written to {args.model}.")
    if evaluation is not None:
        _point_to_report(args.model, dataset, model, evaluation, console, out)
    out.print("Model file creation is complete.")

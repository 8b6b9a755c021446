#!/usr/bin/env python3
"""Fit a PatchCore, PaDiM or SPADE model on good images, evaluate it on test/ when present
(results and a contact sheet beside the model), save one file."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ind_knn_ad import environment, exit_codes  # noqa: F401 - environment first: see there
from ind_knn_ad.borders import BORDERS, DEFAULT_BORDER
from ind_knn_ad.data import DATASETS_DIR, Dataset, DatasetError, load_dataset
from ind_knn_ad.exit_codes import UsageError
from ind_knn_ad.images import ImageError, Preprocess
from ind_knn_ad.limits import FIT_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.methods import DEFAULT, DEFAULT_IMAGE_SCORE, find, having_image_score, names
from ind_knn_ad.model_file import DEFAULT_MODEL_PATH
from ind_knn_ad.scoring import IMAGE_SCORES
from ind_knn_ad.threshold import AUTO, parse_threshold

if TYPE_CHECKING:
    from rich.console import Console

    from ind_knn_ad.data import TestImage
    from ind_knn_ad.evaluate import Evaluation
    from ind_knn_ad.extractor import FitSettings
    from ind_knn_ad.heatmap import SheetEntry
    from ind_knn_ad.model_file import Model
    from ind_knn_ad.scoring import PatchScores


# As in anomaly_detector.py: no ONNX Runtime telemetry, nor its warning on stderr.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _threshold(text: str) -> float | str:
    try:
        return parse_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"coreset fraction must be in (0, 1], not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="metal_nut", help="MVTec AD category name")
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (MVTec layout, or a folder of good images)"
    )
    parser.add_argument("--download-url", help="base URL of an MVTec AD mirror")
    parser.add_argument("--method", choices=names(), default=DEFAULT, help=f"default: {DEFAULT}")
    parser.add_argument("--backbone", default="wide_resnet50_2", help="backbone name")
    parser.add_argument("--layers", type=int, nargs="+", help="backbone stages to use")
    parser.add_argument("--weights", type=Path, help="local backbone weights file")
    parser.add_argument(
        "--border",
        choices=BORDERS,
        default=DEFAULT_BORDER,
        help="edge rule of the neighbourhood average: zero padding counted in the mean "
        f"(zeros), left out of it (exclude) or mirrored (reflect); default: {DEFAULT_BORDER}",
    )
    parser.add_argument("--coreset", type=_fraction, default=0.1, help="memory bank fraction")
    parser.add_argument(
        "--threshold", type=_threshold, default=AUTO, help="'auto' (default) or a number"
    )
    parser.add_argument(
        "--image-score",
        choices=IMAGE_SCORES,
        default=DEFAULT_IMAGE_SCORE,
        help=f"{', '.join(having_image_score(IMAGE_SCORES[-1]))} only",
    )
    parser.add_argument("--image-size", type=int, default=256, help="resize shorter side to")
    parser.add_argument("--crop", type=int, help="centre crop size (default: 224)")
    parser.add_argument(
        "--align",
        action="store_true",
        help="find the part on a plain background and cut it out turned to one pose, for "
        "parts that lie anywhere at any angle (screws); --image-size then sets the scale",
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="output file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size",
        type=_positive,
        help="images per batch (default: 16 at 224 px, fewer for larger inputs)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the existing --model on the dataset's test/ instead of fitting",
    )
    args = parser.parse_args(argv)
    if args.align and args.crop is not None:
        parser.error("--crop does not apply with --align: the cut follows the part")
    if args.crop is None:
        args.crop = args.image_size if args.align else 224
    if not 0 < args.crop <= args.image_size:
        parser.error(f"--crop ({args.crop}) must be between 1 and --image-size ({args.image_size})")
    if find(args.method).image_score_for(args.image_score) is None:
        having = " or --method ".join(having_image_score(args.image_score))
        parser.error(f"--image-score {args.image_score} is for --method {having} only")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be a whole number from 0 to {2**32 - 1}, not {args.seed}")
    if not args.align:  # an aligned cut's size is known once the parts are measured
        problem = input_too_large(args.crop, args.crop, FIT_BYTES_PER_PIXEL)
        if problem:
            parser.error(f"--crop {args.crop} (from --image-size {args.image_size}): {problem}")
    return args


def get_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset folder: --data-dir, or the category under ind_knn_ad/datasets/,
    downloaded when missing."""
    if args.data_dir is not None:
        return load_dataset(args.data_dir, args.data_dir.name)
    root = DATASETS_DIR / args.dataset
    if not root.is_dir():
        from ind_knn_ad.download import download_category

        download_category(args.dataset, DATASETS_DIR, base_url=args.download_url)
    return load_dataset(root, args.dataset)


def print_error(message: str) -> None:
    """One plain line on stderr (never wrapped), as shell users and log parsers expect."""
    print(f"error: {message}", file=sys.stderr)


def report(out: Console, dataset_name: str, evaluation: Evaluation, method: str) -> None:
    from ind_knn_ad.reporting import results_tables

    for table in results_tables(dataset_name, evaluation, method):
        out.print(table)


def evaluate_only(
    args: argparse.Namespace, dataset: Dataset, console: Console, out: Console
) -> int:
    """Evaluate an existing model file with the graph it carries, exactly as scoring runs."""
    from ind_knn_ad.evaluate import evaluate
    from ind_knn_ad.model_file import ModelFileError, load_model
    from ind_knn_ad.runtime import Detector

    if not dataset.test:
        print_error(f"{dataset.root}: no test/ folder to evaluate on")
        return exit_codes.DATA_ERROR
    try:
        model = load_model(args.model)
        detector = Detector(model, args.device)
        out.print(f"█│ Running {model.method} on {dataset.name} dataset.")
        threshold = model.threshold if isinstance(args.threshold, str) else args.threshold
        sheet = SheetCollector(detector.preprocess)
        evaluation = evaluate(
            detector.score_arrays,
            dataset,
            detector.preprocess,
            threshold,
            args.batch_size or detector.batch_size,
            each=sheet,
        )
    except ModelFileError as error:
        print_error(str(error))
        return exit_codes.MODEL_ERROR
    except ValueError as error:
        print_error(str(error))
        return exit_codes.USAGE
    except ImageError as error:
        print_error(str(error))
        return exit_codes.DATA_ERROR
    report(out, dataset.name, evaluation, model.method)
    from ind_knn_ad.model_file import write_together

    try:
        model_bytes = args.model.read_bytes()
        files = evaluation_files(
            args.model, model_bytes, evaluation, sheet.entries, model, threshold, dataset.name
        )
        write_together(files)
    except OSError as error:
        print_error(f"cannot write results beside {args.model}: {error}")
        return exit_codes.WRITE_ERROR
    return exit_codes.OK


OUTPUT_SUFFIXES = (".results.json", ".contact_sheet.png")  # beside the model, as evaluated


def evaluation_files(
    model_path: Path,
    model_bytes: bytes,
    evaluation: Evaluation,
    entries: list[SheetEntry],
    model: Model,
    threshold: float,
    dataset: str,
) -> list[tuple[Path, bytes]]:
    """`<model>.results.json` and `<model>.contact_sheet.png`, as (path, bytes). Both name
    the model they belong to by its SHA-256 (`model_sha256`: a JSON field, a PNG text
    chunk), so files that do not match their model can be told."""
    import hashlib

    from ind_knn_ad.heatmap import contact_sheet, png_bytes

    digest = hashlib.sha256(model_bytes).hexdigest()
    results = {"model_sha256": digest, **evaluation.to_dict()}
    if "detectability" in model.settings:
        results["detectability"] = model.settings["detectability"]
    title = (
        f"{model.method} on {dataset}: {len(entries)} test images by score, "
        f"threshold {threshold:.4g}; red captions: wrong verdicts"
    )
    return [
        (
            model_path.with_suffix(OUTPUT_SUFFIXES[0]),
            (json.dumps(results, indent=2) + "\n").encode(),
        ),
        (
            model_path.with_suffix(OUTPUT_SUFFIXES[1]),
            png_bytes(contact_sheet(entries, threshold, title), {"model_sha256": digest}),
        ),
    ]


class SheetCollector:
    """Gathers the contact sheet's cells while the test set is evaluated (an `each`
    callback), so no test image is scored twice."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess
        self.entries: list[SheetEntry] = []

    def __call__(self, item: TestImage, result: PatchScores) -> None:
        from ind_knn_ad.heatmap import sheet_entry

        self.entries.append(
            sheet_entry(
                item.path, result.patch_map, self.preprocess, result.score, item.defect_type
            )
        )


def make_preprocess(args: argparse.Namespace, dataset: Dataset, console: Console) -> Preprocess:
    """The preprocess settings; with --align, the cut is measured on the training images."""
    if not args.align:
        return Preprocess(resize=args.image_size, crop=args.crop)
    from ind_knn_ad.alignment import measure_box

    box = measure_box(dataset.train)
    preprocess = Preprocess(resize=args.image_size, crop=args.crop, align=box)
    width, height = preprocess.size
    console.print(f"Aligned cut: {width}x{height} px ({box.length} x {box.breadth} of the frame).")
    return preprocess


def backbone_strides(args: argparse.Namespace) -> list[int]:
    """The strides of the chosen backbone stages, from the architecture alone (no weights,
    nothing downloaded); UsageError for a stage the backbone does not have."""
    import timm

    from ind_knn_ad.backbones import backbone_spec

    spec = backbone_spec(args.backbone)
    try:
        network = timm.create_model(spec.timm_name, pretrained=False, features_only=True)
    except Exception:  # the fit itself reports what is wrong with the backbone
        return []
    strides = network.feature_info.reduction()
    layers = args.layers or list(spec.layers)
    wrong = [layer for layer in layers if not 0 <= layer < len(strides)]
    if wrong:
        default = " ".join(map(str, spec.layers))
        raise UsageError(
            f"--layers {' '.join(map(str, wrong))}: backbone {args.backbone} has stages 0 to "
            f"{len(strides) - 1} (default: {default})"
        )
    return [strides[layer] for layer in layers]


def check_fit(args: argparse.Namespace, dataset: Dataset, settings: FitSettings) -> None:
    """What would fail only after feature extraction, said up front in the user's terms:
    DatasetError for too few training images, UsageError for options."""
    count = len(dataset.train)
    if count < 2:
        raise DatasetError(
            f"{dataset.root}: {count} training image; a fit needs at least 2 (the threshold "
            "and the methods compare each training image with the others)"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    width, height = settings.preprocess.size
    problem = input_too_large(width, height, FIT_BYTES_PER_PIXEL)
    if problem:
        raise UsageError(f"--image-size {args.image_size} with --align: {problem}")
    strides = backbone_strides(args)
    if strides:
        step = min(strides)
        total = count * -(-width // step) * -(-height // step)
        find(args.method).check_fit(settings, total, args.threshold == AUTO)


WEIGHTS_HOST = ("huggingface.co", 443)  # where timm downloads pretrained weights from


def offline_unless_reachable(args: argparse.Namespace) -> None:
    """Without network, the Hugging Face hub retried a missing download for about 53 s
    before failing: when its host cannot be reached in 3 s, tell it to stay offline (it
    then uses cached weights or fails at once, and the fit says what to do instead)."""
    if args.weights is not None or args.evaluate_only or os.environ.get("HF_HUB_OFFLINE"):
        return
    import socket

    try:
        socket.create_connection(WEIGHTS_HOST, timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported


def run(args: argparse.Namespace) -> int:
    from functools import partial

    offline_unless_reachable(args)

    from rich.console import Console

    from ind_knn_ad.backbones import BackboneError
    from ind_knn_ad.download import DownloadError

    console = Console(stderr=True, soft_wrap=True)
    out = Console(highlight=False, soft_wrap=True)
    try:
        dataset = get_dataset(args)
    except (DatasetError, DownloadError) as error:
        print_error(str(error))
        return exit_codes.DATA_ERROR
    if args.evaluate_only:
        return evaluate_only(args, dataset, console, out)
    out.print(f"█│ Running {args.method} on {dataset.name} dataset.")

    from ind_knn_ad.extractor import FitSettings
    from ind_knn_ad.model_file import serialise, write_together
    from ind_knn_ad.reporting import progress_bar
    from ind_knn_ad.train import train

    try:
        preprocess = make_preprocess(args, dataset, console)
    except ImageError as error:
        print_error(str(error))
        return exit_codes.DATA_ERROR
    except ValueError as error:
        print_error(f"{dataset.root}: {error}; fit without --align")
        return exit_codes.DATA_ERROR
    settings = FitSettings(
        backbone=args.backbone,
        layers=tuple(args.layers) if args.layers else None,
        border=args.border,
        coreset_fraction=args.coreset,
        image_score=args.image_score,
        preprocess=preprocess,
        seed=args.seed,
    )
    try:
        check_fit(args, dataset, settings)
    except DatasetError as error:
        print_error(str(error))
        return exit_codes.DATA_ERROR
    except UsageError as error:
        print_error(str(error))
        return exit_codes.USAGE
    except BackboneError as error:
        print_error(str(error))
        return exit_codes.BACKBONE_ERROR
    console.print(f"Backbone {args.backbone}; {len(dataset.train)} training images.")
    if not dataset.test:
        console.print("No test/ folder: training only, evaluation skipped.")
    sheet = SheetCollector(settings.preprocess)
    try:
        result = train(
            dataset,
            settings,
            args.threshold,
            args.device,
            args.weights,
            args.batch_size,
            partial(progress_bar, console),
            args.method,
            sheet,
        )
    except BackboneError as error:
        print_error(str(error))
        return exit_codes.BACKBONE_ERROR
    except ImageError as error:
        print_error(str(error))
        return exit_codes.DATA_ERROR
    except (ValueError, ArithmeticError) as error:  # options were checked: the data is at fault
        print_error(f"{dataset.root}: cannot fit on these images ({error})")
        return exit_codes.DATA_ERROR
    model = result.model
    rule = model.settings["threshold"]["rule"]
    console.print(f"{find(model.method).summary(model)}; threshold {model.threshold:.4g} ({rule}).")
    if result.evaluation is not None:
        report(out, dataset.name, result.evaluation, model.method)
    if "detectability" in model.settings:
        from ind_knn_ad.reporting import detectability_table

        out.print(detectability_table(model.settings["detectability"], model.threshold))
    # The model, results and contact sheet are replaced together: an interrupt leaves all
    # three old files or all three new ones.
    payload = serialise(model)
    files = [(args.model, payload)]
    if result.evaluation is not None:
        files += evaluation_files(
            args.model,
            payload,
            result.evaluation,
            sheet.entries,
            model,
            model.threshold,
            dataset.name,
        )
    try:
        write_together(files)
    except OSError as error:
        print_error(f"cannot write {args.model}: {error}")
        return exit_codes.WRITE_ERROR
    out.print(f"Model written to {args.model}.")
    out.print("Model file creation is complete.")
    return exit_codes.OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ind_knn_ad.model_file import check_writable

    # Now, not after a long fit: the model and the two files written beside it, whose
    # names are up to 6 bytes longer.
    beside = [args.model.with_suffix(s) for s in OUTPUT_SUFFIXES] if args.model.name else []
    for path in (args.model, *beside):
        try:
            check_writable(path)
        except OSError as error:
            print_error(f"cannot write {path}: {error}")
            return exit_codes.WRITE_ERROR
    # SIGTERM unwinds like Ctrl-C, so the atomic save cleans up its temporary file.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: no partial file was left behind", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

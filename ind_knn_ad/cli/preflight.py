"""What make_model.py settles before a fit: the outputs, the dataset (downloaded when
missing), the preprocessing, and every check that would otherwise fail only after minutes
of feature extraction, each said in the user's terms (the options they gave).

Torch-free, and so is all it imports: a fit that cannot run here (its memory plan, a stage
the backbone lacks, too few images) is refused in seconds, before the fit's modules load
(`cli.fit`); only a backbone the registry does not know is looked up in timm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ind_knn_ad import methods
from ind_knn_ad.calibration.threshold import AUTO
from ind_knn_ad.cli.exit_codes import UsageError
from ind_knn_ad.config import BATCH_IMAGES, FitConfig
from ind_knn_ad.errors import DatasetError, WriteError
from ind_knn_ad.features.augment import views_of
from ind_knn_ad.features.registry import BACKBONES, default_layers
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.atomic import check_writable
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.datasets import DATASETS_DIR, DEFAULT_DATASET, Dataset, load_dataset
from ind_knn_ad.io.download import download_category
from ind_knn_ad.io.limits import FIT_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.patchcore import memory
from ind_knn_ad.report.side_files import beside
from ind_knn_ad.search.coreset import coreset_size
from ind_knn_ad.tuning.backbones import searched_backbones

if TYPE_CHECKING:
    from ind_knn_ad.cli.fit import FitRequest


@dataclass(frozen=True)
class Prepared:
    """What the checks before a fit settled: the dataset, the configuration (with --align
    given and settings fixed, its cut measured) and, for a method that streams, the memory
    plan of that configuration (with automatic settings: of the choice's first backbone at
    the base input; the chosen one is planned again)."""

    dataset: Dataset
    config: FitConfig
    plan: memory.Plan | None


def prepare(request: FitRequest, say: Callable[[str], None]) -> Prepared:
    """The checks that need no torch, in the order a user would want them failed: the
    outputs, the dataset (downloaded when missing), then the fit's options and memory.
    `say` hears the aligned cut's size."""
    args, config = request.options, request.config
    check_outputs(args.model)
    dataset = find_dataset(args.data_dir, args.dataset, args.download_url)
    if args.evaluate_only:
        return Prepared(dataset, config, None)
    if args.operating_point is not None and not dataset.test:
        raise UsageError("--operating-point needs labelled images in test/")
    auto_threshold = args.threshold == AUTO
    if request.auto:
        first = replace(config, backbone=searched_backbones(config, request.given)[0])
        return Prepared(dataset, config, check_fit(dataset, first, auto_threshold))
    if "align" in request.given:
        config = replace(config, preprocess=aligned(dataset, config.preprocess, say))
    return Prepared(dataset, config, check_fit(dataset, config, auto_threshold))


def check_outputs(model_path: Path) -> None:
    """WriteError now, not after a long fit, if the model or a file written beside it
    (`report.results.beside`) could not be written."""
    for path in (model_path, *beside(model_path)):
        try:
            check_writable(path)
        except OSError as error:
            raise WriteError(f"cannot write {path}: {error}") from error


def find_dataset(data_dir: Path | None, name: str | None, download_url: str | None) -> Dataset:
    """`data_dir`, called `name` (default: the folder's), or the MVTec AD category `name`
    under ind_knn_ad/datasets/, downloaded when missing."""
    if data_dir is not None:
        return load_dataset(data_dir, name or data_dir.name)
    category = name or DEFAULT_DATASET
    root = DATASETS_DIR / category
    if not root.is_dir():
        download_category(category, DATASETS_DIR, base_url=download_url)
    return load_dataset(root, category)


def aligned(dataset: Dataset, preprocess: Preprocess, say: Callable[[str], None]) -> Preprocess:
    """`preprocess` with the --align cut measured on the training images (`say` hears its
    size); DatasetError if no part is found there."""
    try:
        box = measure_box(dataset.train)
    except ValueError as error:
        raise DatasetError(f"{dataset.root}: {error}; fit without --align") from None
    preprocess = replace(preprocess, align=box)
    width, height = preprocess.size
    say(f"Aligned cut: {width}x{height} px ({box.length} x {box.breadth} of the frame).")
    return preprocess


def backbone_stages(backbone: str, layers: tuple[int, ...] | None) -> list[tuple[int, int]]:
    """(stride, channels) of the chosen backbone stages, from the registry or else the
    architecture alone (no weights, nothing downloaded); UsageError for a stage the
    backbone does not have; empty when timm cannot build it (the fit then says why)."""
    spec = BACKBONES.get(backbone)
    if spec is not None and spec.stages:
        stages = list(spec.stages)
    else:  # a timm architecture, or an entry added without its stages
        stages = _timm_stages(backbone if spec is None else spec.timm_name)
    if not stages:
        return []
    defaults = default_layers(backbone)
    layers = layers or defaults
    wrong = [layer for layer in layers if not 0 <= layer < len(stages)]
    if wrong:
        default = " ".join(map(str, defaults))
        raise UsageError(
            f"--layers {' '.join(map(str, wrong))}: backbone {backbone} has stages 0 to "
            f"{len(stages) - 1} (default: {default})"
        )
    return [stages[layer] for layer in layers]


def _timm_stages(backbone: str) -> list[tuple[int, int]]:
    """(stride, channels) of each stage of a timm architecture the registry does not know:
    timm (and with it torch) loads here, for such backbones only."""
    import timm

    try:
        network = timm.create_model(backbone, pretrained=False, features_only=True)
    except Exception:  # the fit itself reports what is wrong with the backbone
        return []
    info = network.feature_info
    return list(zip(info.reduction(), info.channels(), strict=True))


def check_fit(dataset: Dataset, config: FitConfig, auto_threshold: bool) -> memory.Plan | None:
    """DatasetError for too few training images, UsageError (or the library's ConfigError)
    for options that cannot work with this backbone, dataset or machine (the method checks
    its own); for a method that can stream, how the fit runs in the memory here."""
    count = len(dataset.train)
    if count < 2:
        raise DatasetError(
            f"{dataset.root}: {count} training image; a fit needs at least 2 (the threshold "
            "and the methods compare each training image with the others)"
        )
    width, height = config.preprocess.size
    problem = input_too_large(width, height, FIT_BYTES_PER_PIXEL)
    if problem:
        raise UsageError(f"--image-size {config.preprocess.resize} with --align: {problem}")
    stages = backbone_stages(config.backbone, config.layers)
    if not stages:
        return None
    step = min(stride for stride, _ in stages)
    own = -(-width // step) * -(-height // step)
    fitter = methods.fitter(config.method)
    fitter.check_fit(config, count * own, auto_threshold)
    if not fitter.streams:
        return None
    rows = own * (1 + len(views_of(config.augment)))
    shape = memory.FitShape(
        images=count,
        image_rows=rows,
        own_rows=own,
        channels=sum(channels for _, channels in stages),
        bank_rows=coreset_size(count * rows, config.coreset, rows),
        batch_pixels=width * height * images_per_batch((width, height), BATCH_IMAGES),
    )
    plan = memory.plan(shape, memory.memory_here(shape, width, height))
    if plan.problem:
        raise UsageError(f"{dataset.root}: {plan.problem}")
    return plan


@contextmanager
def data_at_fault(dataset: Dataset) -> Iterator[None]:
    """A DatasetError raised in a fit (the library's word that the images are at fault,
    which does not know the folder) names the dataset. Nothing else is the data's: any
    other error passes as it is, and an unexpected one is reported as a bug."""
    try:
        yield
    except DatasetError as error:
        raise DatasetError(f"{dataset.root}: cannot fit on these images ({error})") from None

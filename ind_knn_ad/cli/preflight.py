"""What make_model.py settles before a fit: the outputs, the dataset (downloaded when
missing), the preprocessing, and every check that would otherwise fail only after minutes
of feature extraction, each said in the user's terms (the options they gave)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import timm

from ind_knn_ad import methods
from ind_knn_ad.cli.exit_codes import UsageError
from ind_knn_ad.config import BATCH_IMAGES, FitConfig
from ind_knn_ad.errors import DatasetError, WriteError
from ind_knn_ad.features.augment import views_of
from ind_knn_ad.features.backbones import backbone_spec
from ind_knn_ad.features.device import select_device
from ind_knn_ad.io.alignment import measure_box
from ind_knn_ad.io.atomic import check_writable
from ind_knn_ad.io.batches import images_per_batch
from ind_knn_ad.io.datasets import DATASETS_DIR, DEFAULT_DATASET, Dataset, load_dataset
from ind_knn_ad.io.download import download_category
from ind_knn_ad.io.limits import FIT_BYTES_PER_PIXEL, input_too_large
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.fitting import ProgressFactory
from ind_knn_ad.methods.patchcore import memory
from ind_knn_ad.report.results import beside
from ind_knn_ad.search.coreset import coreset_size
from ind_knn_ad.tuning.autosettings import Choice, choose


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


def backbone_strides(backbone: str, layers: tuple[int, ...] | None) -> list[int]:
    """The strides of the chosen backbone stages, from the architecture alone (no weights,
    nothing downloaded); UsageError for a stage the backbone does not have."""
    return [stride for stride, _ in backbone_stages(backbone, layers)]


def backbone_stages(backbone: str, layers: tuple[int, ...] | None) -> list[tuple[int, int]]:
    """(stride, channels) of the chosen backbone stages, as `backbone_strides`."""
    spec = backbone_spec(backbone)
    try:
        network = timm.create_model(spec.timm_name, pretrained=False, features_only=True)
    except Exception:  # the fit itself reports what is wrong with the backbone
        return []
    strides = network.feature_info.reduction()
    channels = network.feature_info.channels()
    layers = layers or spec.layers
    wrong = [layer for layer in layers if not 0 <= layer < len(strides)]
    if wrong:
        default = " ".join(map(str, spec.layers))
        raise UsageError(
            f"--layers {' '.join(map(str, wrong))}: backbone {backbone} has stages 0 to "
            f"{len(strides) - 1} (default: {default})"
        )
    return [(strides[layer], channels[layer]) for layer in layers]


def check_fit(
    dataset: Dataset, config: FitConfig, device: str, auto_threshold: bool
) -> memory.Plan | None:
    """DatasetError for too few training images, UsageError (or the library's ConfigError)
    for options that cannot work with this backbone, dataset or machine (the method checks
    its own); for a method that can stream, how the fit runs in the memory here."""
    count = len(dataset.train)
    if count < 2:
        raise DatasetError(
            f"{dataset.root}: {count} training image; a fit needs at least 2 (the threshold "
            "and the methods compare each training image with the others)"
        )
    if device == "cuda":
        select_device(device)
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


def choose_settings(
    dataset: Dataset,
    config: FitConfig,
    given: AbstractSet[str],
    device: str,
    progress: ProgressFactory,
    weights: Path | None = None,
    larger: bool = True,
) -> Choice:
    """The automatic settings for this dataset (`autosettings.choose`); a data error on the
    training images names the dataset, as in the fit."""
    with data_at_fault(dataset):
        return choose(
            config,
            dataset.train,
            given,
            device=device,
            progress=progress,
            weights=weights,
            larger=larger,
        )


@contextmanager
def data_at_fault(dataset: Dataset) -> Iterator[None]:
    """A DatasetError raised in a fit (the library's word that the images are at fault,
    which does not know the folder) names the dataset. Nothing else is the data's: any
    other error passes as it is, and an unexpected one is reported as a bug."""
    try:
        yield
    except DatasetError as error:
        raise DatasetError(f"{dataset.root}: cannot fit on these images ({error})") from None

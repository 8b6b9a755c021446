"""Finding images on disk: MVTec AD layout, or a plain folder of good images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ind_knn_ad.errors import DatasetError
from ind_knn_ad.io.images import is_image_file

GOOD = "good"
# Where make_model.py keeps (and downloads) MVTec AD categories by default.
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
DEFAULT_DATASET = "metal_nut"  # the MVTec AD category a fit takes when given none
# Real MVTec AD images for the tests and benchmarks, beside the checkout and never inside it
# (their licence is CC BY-NC-SA); IND_KNN_AD_REAL_DATA points elsewhere.
REAL_DATA_DIR = Path(
    os.environ.get("IND_KNN_AD_REAL_DATA")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "mvtec"
)


@dataclass(frozen=True)
class TestImage:
    """One evaluation image: label 1 is defective; `mask` is its ground truth, if any."""

    __test__ = False  # not a pytest test class, despite the name

    path: Path
    defect_type: str
    mask: Path | None

    @property
    def label(self) -> int:
        return int(self.defect_type != GOOD)


@dataclass(frozen=True)
class Dataset:
    """Training images (good only) and, when the folder has `test/`, labelled test images."""

    name: str
    root: Path
    train: list[Path]
    test: list[TestImage]

    @property
    def has_masks(self) -> bool:
        return any(item.mask is not None for item in self.test)


def _unreadable(path: Path, error: OSError) -> DatasetError:
    """A DatasetError naming the path that could not be looked at or listed, in the
    system's words ("permission denied", "file name too long")."""
    reason = error.strerror or type(error).__name__
    return DatasetError(f"{path}: cannot read this folder ({reason[:1].lower()}{reason[1:]})")


def _is_dir(path: Path) -> bool:
    """Path.is_dir, with DatasetError where the path cannot be looked at (Path.is_dir
    raises OSError for a name too long or a folder on the way that cannot be searched)."""
    try:
        return path.is_dir()
    except OSError as error:
        raise _unreadable(path, error) from None


def _entries(folder: Path) -> list[Path]:
    """The entries of `folder`, or DatasetError naming it if it cannot be listed."""
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise _unreadable(folder, error) from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (PNG, JPEG, BMP, TIFF; any case);
    DatasetError naming the folder if it cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    except OSError as error:
        raise _unreadable(folder, error) from None


def _find_mask(root: Path, defect_type: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect_type
    for candidate in (folder / f"{image.stem}_mask.png", folder / image.name):
        try:
            if candidate.is_file():
                return candidate
        except OSError as error:
            raise _unreadable(folder, error) from None
    return None


def load_dataset(root: Path, name: str | None = None) -> Dataset:
    """MVTec layout (`train/good`, optional `test/<type>` and `ground_truth/<type>`), or a
    plain folder of good images, which is used for training alone; DatasetError naming
    the folder that is missing or cannot be read."""
    root = Path(root)
    name = name or root.name
    if not _is_dir(root):
        raise DatasetError(f"{root}: dataset folder not found")
    train_folder = root / "train" / GOOD
    if not _is_dir(train_folder):
        if (root / "train").exists() or (root / "test").exists():
            raise DatasetError(f"{root}: has train/ or test/ but no train/good/ folder")
        train_folder = root
    train = list_images(train_folder)
    if not train:
        raise DatasetError(f"{train_folder}: no training images (PNG, JPEG, BMP or TIFF)")
    test: list[TestImage] = []
    test_folder = root / "test"
    if train_folder != root and _is_dir(test_folder):
        for type_folder in sorted(p for p in _entries(test_folder) if _is_dir(p)):
            for image in list_images(type_folder):
                mask = (
                    None if type_folder.name == GOOD else _find_mask(root, type_folder.name, image)
                )
                test.append(TestImage(image, type_folder.name, mask))
    return Dataset(name, root, train, test)

"""A user's own folders: MVTec layout or plain images, any common format, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_script
from PIL import Image

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.errors import DatasetError
from ind_knn_ad.io.datasets import DATASETS_DIR, load_dataset


def _copy_as(sources: list[Path], folder: Path, suffixes: list[str]) -> None:
    """Re-encode images in several formats and letter cases (and sizes, for mixing)."""
    folder.mkdir(parents=True)
    for index, (source, suffix) in enumerate(zip(sources, suffixes * len(sources), strict=False)):
        with Image.open(source) as image:
            size = 256 if index % 2 else 200
            image.convert("RGB").resize((size, size)).save(folder / f"{index:03d}{suffix}")


def test_plain_folder_mixed_formats_and_sizes_trains_without_evaluation(
    sample_dataset: Path, tmp_path: Path
) -> None:
    sources = sorted((sample_dataset / "train" / "good").glob("*.png"))[:12]
    folder = tmp_path / "parts"
    _copy_as(sources, folder, [".png", ".JPG", ".jpeg", ".BMP", ".tif", ".TIFF"])
    (folder / "notes.txt").write_text("not an image")
    dataset = load_dataset(folder)
    assert len(dataset.train) == 12 and dataset.test == []
    model = tmp_path / "parts.safetensors"
    result = run_script(
        "make_model.py", "--data-dir", folder, "--backbone", "efficientnet_lite0",
        "--model", model, "--coreset", "0.05",
    )  # fmt: skip
    assert "evaluation skipped" in result.stderr
    assert "Test results" not in result.stdout
    assert result.stdout.rstrip().endswith("Model file creation is complete.")
    assert model.is_file() and not model.with_suffix(".results.json").exists()
    scored = run_script("anomaly_detector.py", "--model", model, folder / "000.png")
    assert scored.stdout.startswith(f"{folder / '000.png'},")


def test_mvtec_layout_without_masks_reports_image_metrics(
    sample_dataset: Path, sample_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "nomasks"
    shutil.copytree(sample_dataset, copy, ignore=shutil.ignore_patterns("ground_truth"))
    model = tmp_path / "model.safetensors"
    shutil.copy(sample_model, model)
    result = run_script("make_model.py", "--data-dir", copy, "--model", model, "--evaluate-only")
    assert "image_rocauc" in result.stdout
    # Fitted on the sample set, evaluated on a copy named otherwise: the fit's own results
    # are kept and these go beside them under the copy's name.
    results = json.loads((tmp_path / "model.results.nomasks.json").read_text())
    assert results["pixel_rocauc"] is None
    assert results["image_rocauc"] == 1.0
    assert {"f1", "best_f1", "best_f1_threshold", "confusion_matrix"} <= set(results)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty", "no training images"),
        ("missing", "dataset folder not found"),
        ("test_only", "no train/good/ folder"),
    ],
)
def test_unusable_dataset_folders(tmp_path: Path, layout: str, message: str) -> None:
    folder = tmp_path / "data"
    if layout == "empty":
        folder.mkdir()
    elif layout == "test_only":
        (folder / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder)
    result = run_script("make_model.py", "--data-dir", folder, check=False)
    assert result.returncode == exit_codes.DATA_ERROR
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_training_image_names_the_file(sample_dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for source in sorted((sample_dataset / "train" / "good").glob("*.png"))[:3]:
        shutil.copy(source, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_script(
        "make_model.py", "--data-dir", folder, "--backbone", "efficientnet_lite0",
        "--model", tmp_path / "m.safetensors", check=False,
    )  # fmt: skip
    assert result.returncode == exit_codes.DATA_ERROR
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_failed_download_leaves_nothing_and_says_where_to_put_data() -> None:
    if (DATASETS_DIR / "bottle").exists():
        pytest.skip("bottle is already downloaded here")
    before = set(DATASETS_DIR.iterdir()) if DATASETS_DIR.exists() else set()
    result = run_script(
        "make_model.py", "--dataset", "bottle", "--download-url", "http://127.0.0.1:9/",
        check=False,
    )  # fmt: skip
    assert result.returncode == exit_codes.DATA_ERROR
    assert "bottle/train/good" in result.stderr and "Traceback" not in result.stderr
    after = set(DATASETS_DIR.iterdir()) if DATASETS_DIR.exists() else set()
    assert after == before

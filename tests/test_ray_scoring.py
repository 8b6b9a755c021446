"""Scoring on Ray (`runtime.ray_scoring`): on a local two-worker cluster started here, the
records are the scorer command's, byte for byte, from paths and from bytes alike, and a bad
image costs only its own record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_script

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ind_knn_ad[ray]')")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster: a CPU for each of two scorers side by side, and one for reading
    files (Ray Data's read tasks wait for a CPU no scorer holds)."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield
    ray.shutdown()


def _images(sample_dataset: Path) -> list[str]:
    return sorted(str(path) for path in (sample_dataset / "test").rglob("*.png"))[:12]


def test_records_match_the_command_byte_for_byte(
    cluster: None, sample_model: Path, sample_dataset: Path
) -> None:
    from ind_knn_ad.runtime.ray_scoring import score_dataset

    images = _images(sample_dataset)
    printed = run_script("anomaly_detector.py", "--model", sample_model, *images).stdout
    paths = ray.data.from_items([{"path": image} for image in images])
    records = score_dataset(paths, sample_model, workers=2, batch_size=4).take_all()
    assert "".join(row["record"] for row in records) == printed
    assert {row["error"] for row in records} == {""}
    contents = ray.data.read_binary_files(images, include_paths=True)
    from_bytes = score_dataset(contents, sample_model, workers=2, batch_size=4).take_all()
    # read_binary_files gives paths without a leading slash on a local file system.
    names = {row["record"].split(",")[0].lstrip("/") for row in from_bytes}
    assert names == {image.lstrip("/") for image in images}
    scores = sorted(row["record"].split(",", 1)[1] for row in from_bytes)
    assert scores == sorted(line.split(",", 1)[1] + "\n" for line in printed.splitlines())


def test_a_bad_image_costs_its_own_record(
    cluster: None, sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from ind_knn_ad.runtime.ray_scoring import score_dataset

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    images = [*_images(sample_dataset)[:3], str(broken)]
    rows = score_dataset(ray.data.from_items([{"path": p} for p in images]), sample_model)
    rows = rows.take_all()
    assert [bool(row["record"]) for row in rows] == [True, True, True, False]
    assert rows[3]["error"].startswith(str(broken))

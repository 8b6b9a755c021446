"""Each image file is decoded once per run: the evaluation (with its masks and contact
sheet) and scoring with --heatmap use what preprocessing kept, not the file again."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ind_knn_ad.cli import score
from ind_knn_ad.io.datasets import load_dataset
from ind_knn_ad.report.results import evaluate_saved


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often Pillow opened each file (by resolved path) while the test ran."""
    counts: Counter[str] = Counter()
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
        counts[os.path.realpath(path)] += 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return counts


def test_evaluation_opens_each_file_once(
    sample_model: Path, sample_dataset: Path, opened: Counter[str]
) -> None:
    dataset = load_dataset(sample_dataset)
    saved = evaluate_saved(sample_model, dataset, "cpu", None, None, lambda _: None)
    assert len(saved.sheet.entries) == len(dataset.test)  # the contact sheet's cells
    files = [item.path for item in dataset.test] + [i.mask for i in dataset.test if i.mask]
    assert any(item.mask for item in dataset.test)
    assert {os.path.realpath(f) for f in files} == set(opened)
    assert set(opened.values()) == {1}


def test_scoring_with_heatmaps_opens_each_file_once(
    sample_model: Path,
    sample_dataset: Path,
    opened: Counter[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = sorted((sample_dataset / "test").rglob("*.png"))[:6]
    code = score.main(["--model", str(sample_model), "--heatmap", str(tmp_path), *map(str, images)])
    assert code == 0
    assert len(capsys.readouterr().out.splitlines()) == len(images)
    assert len(list(tmp_path.rglob("*.png"))) == len(images)
    assert {os.path.realpath(p) for p in images} == set(opened)
    assert set(opened.values()) == {1}

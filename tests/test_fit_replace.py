"""A fit never replaces a model file unasked (`--force`), and `--dataset` with `--data-dir`
names the data rather than being ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import ROOT, fit_efficientnet, run_script
from safetensors import safe_open


def test_a_fit_over_the_default_model_is_refused(sample_dataset: Path, tmp_path: Path) -> None:
    """Without --model the fit writes models/model.safetensors: an earlier one stays."""
    (tmp_path / "models").mkdir()
    kept = tmp_path / "models" / "model.safetensors"
    kept.write_bytes(b"an earlier fit")
    result = run_script(
        ROOT / "make_model.py", "--data-dir", sample_dataset, cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        "error: models/model.safetensors exists: --force replaces it, or give another --model"
    )
    assert kept.read_bytes() == b"an earlier fit"


def test_force_replaces_it_and_says_so_and_dataset_names_the_data(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    model = tmp_path / "parts.safetensors"
    shutil.copy(sample_model, model)
    result = fit_efficientnet(sample_dataset, model, "--force", "--dataset", "nuts", "--seed", "3")
    assert f"note: replacing {model} (--force)" in result.stderr.splitlines()
    assert "Running patchcore on nuts dataset." in result.stdout
    with safe_open(str(model), framework="numpy") as reader:
        settings = json.loads(reader.metadata()["ind_knn_ad"])
    assert settings["dataset"] == "nuts"
    assert model.read_bytes() != sample_model.read_bytes()  # another seed's coreset

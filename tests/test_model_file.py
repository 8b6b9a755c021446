"""The model file: round trips exactly, and the loader rejects anything it cannot trust."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.model_file.schema import FORMAT, FORMAT_VERSION, Model
from ind_knn_ad.model_file.store import METADATA_KEY, load_model, save_model, validate_settings
from ind_knn_ad.runtime.detector import Detector


def test_round_trip_gives_bit_identical_scores(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    original = load_model(sample_model)
    copy_path = tmp_path / "copy.safetensors"
    save_model(original, copy_path)
    reloaded = load_model(copy_path)
    assert reloaded.settings == original.settings
    assert reloaded.feature_graph == original.feature_graph
    np.testing.assert_array_equal(reloaded.tensors["memory_bank"], original.tensors["memory_bank"])
    images = sorted((sample_dataset / "test").rglob("*.png"))
    before = [r.score for _, r in Detector(original, "cpu").score_files(images)]
    after = [r.score for _, r in Detector(reloaded, "cpu").score_files(images)]
    assert before == after


def test_settings_record_what_scoring_needs(sample_model: Path) -> None:
    settings = load_model(sample_model).settings
    # Without part alignment the file is what version 1 tools read.
    assert settings["format"] == FORMAT and settings["format_version"] == 1
    assert settings["backbone"] == "efficientnet_lite0"
    assert settings["preprocess"]["resize"] >= settings["preprocess"]["crop"] > 0
    assert settings["threshold"]["value"] > 0 and "rule" in settings["threshold"]
    assert settings["threshold"]["holdout"]["count"] == settings["train_images"]
    assert settings["coreset"]["size"] == load_model(sample_model).tensors["memory_bank"].shape[0]
    assert {"torch", "timm", "ind_knn_ad"} <= set(settings["versions"])


def _settings() -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": "patchcore",
        "backbone": "efficientnet_lite0",
        "layers": [2, 3],
        "neighbourhood": 3,
        "preprocess": {"resize": 256, "crop": 224, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "feature_dim": 4,
        "image_score": "max",
        "threshold": {"value": 1.5, "rule": "fixed"},
        "coreset": {"fraction": 0.1, "size": 3, "total_patches": 30},
        "train_images": 2,
        "dataset": "unit",
        "versions": {},
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("backbone"), "'backbone' is missing"),
        (lambda s: s.update(train_images="2"), "'train_images' is missing or not a int"),
        (lambda s: s.update(train_images=True), "'train_images' is missing or not a int"),
        (lambda s: s.update(format="other"), "not an ind_knn_ad model file"),
        (lambda s: s.update(format_version=FORMAT_VERSION + 1), "newer than this tool"),
        (lambda s: s.update(format_version=0), "unsupported model format version 0"),
        (lambda s: s["threshold"].update(value=float("nan")), "threshold value"),
        (lambda s: s["threshold"].pop("value"), "threshold value"),
        (
            lambda s: s.update(
                format_version=1,
                preprocess={**s["preprocess"], "align": {"length": 1.0, "breadth": 0.3}},
            ),
            "'align' needs model format version 2",
        ),
    ],
)
def test_invalid_settings_are_rejected(change, message: str) -> None:
    settings = copy.deepcopy(_settings())
    change(settings)
    with pytest.raises(ModelFileError, match=message):
        validate_settings(settings)


def test_valid_settings_pass() -> None:
    validate_settings(_settings())
    validate_settings({**_settings(), "layers": [0, 1]})  # the stem is a stage too
    aligned = _settings()
    aligned["preprocess"]["align"] = {"length": 1.0, "breadth": 0.3}
    validate_settings(aligned)
    validate_settings({**_settings(), "format_version": 1})


def test_bank_shape_must_match_settings(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(
        {"memory_bank": np.zeros((3, 5), np.float32), "feature_graph": np.zeros(4, np.uint8)},
        path,
        metadata={METADATA_KEY: json.dumps(_settings())},
    )
    with pytest.raises(ModelFileError, match=r"memory bank has shape \(3, 5\)"):
        load_model(path)


def test_save_refuses_invalid_settings_and_writes_nothing(tmp_path: Path) -> None:
    settings = _settings()
    del settings["dataset"]
    with pytest.raises(ModelFileError):
        bank = np.zeros((3, 4), np.float32)
        save_model(Model(settings, b"graph", {"memory_bank": bank}), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_then_load_small_model(tmp_path: Path) -> None:
    bank = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_model(
        Model(_settings(), b"\x00graph\xff", {"memory_bank": bank}), tmp_path / "m.safetensors"
    )
    model = load_model(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(model.tensors["memory_bank"], bank)
    assert model.feature_graph == b"\x00graph\xff" and model.threshold == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# --- integrity (issue 13, item 9) ----------------------------------------------------------


def test_files_carry_sha256_of_every_tensor_and_the_settings(sample_model: Path) -> None:
    from safetensors import safe_open

    from ind_knn_ad.model_file.store import DIGESTS, SETTINGS_DIGEST_KEY, tensor_digest

    with safe_open(str(sample_model), framework="numpy") as reader:
        metadata = reader.metadata()
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    settings = json.loads(metadata[METADATA_KEY])
    assert settings[DIGESTS] == {key: tensor_digest(key, value) for key, value in tensors.items()}
    assert (
        metadata[SETTINGS_DIGEST_KEY] == hashlib.sha256(metadata[METADATA_KEY].encode()).hexdigest()
    )
    assert DIGESTS not in load_model(sample_model).settings  # the record is the file's own


def test_files_from_before_the_digests_still_load(sample_model: Path, tmp_path: Path) -> None:
    """Written without the SHA-256 record (as every file was before): read, unverified."""
    model = load_model(sample_model)
    old = tmp_path / "old.safetensors"
    save_file(
        {
            "memory_bank": model.tensors["memory_bank"],
            "feature_graph": np.frombuffer(model.feature_graph, np.uint8),
        },
        old,
        metadata={METADATA_KEY: json.dumps(model.settings)},
    )
    again = load_model(old)
    assert again.settings == model.settings and again.feature_graph == model.feature_graph


def test_resaving_records_fresh_digests(sample_model: Path, tmp_path: Path) -> None:
    """A loaded model, changed and saved again, loads: its digests are recomputed."""
    model = load_model(sample_model)
    half = model.tensors["memory_bank"][::2].copy()
    save_model(Model(model.settings, model.feature_graph, {"memory_bank": half}), tmp_path / "m")
    assert load_model(tmp_path / "m").tensors["memory_bank"].shape[0] == len(half)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["threshold"].update(value=True), "threshold value"),
        (lambda s: s.update(neighbourhood=True), "'neighbourhood' is missing or not a int"),
        (lambda s: s.update(feature_dim=0), "'feature_dim' is not a positive whole number"),
        (lambda s: s.update(layers=[]), "'layers' is not a list"),
        (lambda s: s.update(layers=[-1]), "'layers' is not a list"),
        (lambda s: s["preprocess"].update(resize=True), r"bad preprocess settings \(resize"),
        (lambda s: s["preprocess"].update(crop=300), "crop 300 is larger than resize 256"),
        (lambda s: s["preprocess"].update(mean=[0, 0, float("nan")]), "mean is not three finite"),
        (lambda s: s["preprocess"].update(std=[1, 1, 0]), "std is not positive"),
        (lambda s: s["preprocess"].update(align={"length": True}), "align is not a length"),
    ],
)
def test_settings_types_are_strict(change, message: str) -> None:
    settings = copy.deepcopy(_settings())
    change(settings)
    with pytest.raises(ModelFileError, match=message):
        validate_settings(settings)


def test_fuzzed_model_files_give_the_same_score_or_a_refusal(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """The model-loader fuzz target (tests/fuzzing.py), 80 seeded cases; bench/fuzz.py
    runs thousands."""
    import random
    from collections import Counter

    from fuzzing import check_model_case, score_model

    images = sorted((sample_dataset / "test").rglob("*.png"))[:2]
    expected = score_model(sample_model, images)
    original = sample_model.read_bytes()
    rng = random.Random(13)
    outcomes = Counter(
        check_model_case(rng, original, expected, tmp_path / "case.safetensors", images)
        for _ in range(80)
    )
    assert sum(n for kind, n in outcomes.items() if kind.endswith("refused")) > 40, outcomes

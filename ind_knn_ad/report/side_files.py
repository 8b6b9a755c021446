"""The names of the files an evaluation leaves beside its model, light to import: make_model.py
checks that it can write them before the fit's modules load (`cli.preflight`)."""

from __future__ import annotations

from pathlib import Path

MODEL_SUFFIX = ".safetensors"
SIDE_FILES = (("results", "json"), ("contact_sheet", "png"), ("report", "html"))


def beside(model_path: Path, dataset: str | None = None) -> list[Path]:
    """The results file, contact sheet and report of a model file (none for a nameless path), for
    another `dataset` than the fit's when given. Named from the whole file name, so
    `screw.v1` and `screw.v2` keep theirs apart; only `.safetensors` is dropped, which
    keeps the names that `model.safetensors` always had."""
    name = model_path.name
    if not name:
        return []
    if name.endswith(MODEL_SUFFIX) and name != MODEL_SUFFIX:
        name = name.removesuffix(MODEL_SUFFIX)
    middle = f".{dataset}" if dataset is not None else ""
    return [model_path.with_name(f"{name}.{kind}{middle}.{ext}") for kind, ext in SIDE_FILES]

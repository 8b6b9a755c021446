"""What a model is, in words, from its stored settings: the fit's summary line (what
make_model.py prints after a fit) and the description `anomaly-detector --info` prints.

Plain text without rich, so the scorer prints it in the scoring-only install.
"""

from __future__ import annotations

from pathlib import Path

from ind_knn_ad import methods
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.schema import Model


def fit_summary(model: Model) -> str:
    """What a fit kept, in the method's words, and the threshold with its rule."""
    summary = methods.find(model.method).summary(model)
    record = model.settings["threshold"]
    line = f"{summary}; threshold {model.threshold:.4g} ({record['rule']})."
    expected = record.get("expected_false_alarms")
    if expected is not None:
        line += (
            f" Expected false alarms on good images: at most {expected['upper_95']:.1%} "
            f"({expected['held_out_flagged']} of {expected['held_out']} held-out good images "
            "flagged; 95% bound)."
        )
    labelled = record.get("labelled")
    if labelled is not None:
        line += (
            f" At it, {labelled['source']}: {labelled['false_alarms']} of {labelled['good']} "
            f"good flagged, {labelled['misses']} of {labelled['defective']} defective missed."
        )
    return line


def describe(model: Model, path: Path) -> str:
    """`--info`: one `name: value` line per fact, for people and for grep; the threshold
    line is what a `--threshold X` override must be judged against."""
    settings = model.settings
    preprocess = Preprocess.from_dict(settings["preprocess"])
    width, height = preprocess.size
    if preprocess.align is None:
        geometry = f"resize {preprocess.resize}, centre crop {preprocess.crop}"
    else:
        geometry = f"part aligned (--align), cut of {width}x{height} px"
    layers = " ".join(map(str, settings["layers"]))
    versions = ", ".join(f"{name} {version}" for name, version in settings["versions"].items())
    facts = {
        "model": f"{path} (format version {settings['format_version']})",
        "method": f"{model.method}, image score {settings['image_score']}",
        "backbone": f"{settings['backbone']}, stages {layers}, border {settings['border']}",
        "input": f"{geometry}; network input {width}x{height} px",
        "threshold": f"{model.threshold:.6g}",
        "fit": fit_summary(model),
        "training set": f"{settings['dataset']}, {settings['train_images']} good images",
        "fitted with": versions,
    }
    return "".join(f"{name}: {value}\n" for name, value in facts.items())

#!/usr/bin/env python3
"""How far can a score move between two machines? Scoring is exact once the features are
given (tests/test_exact_search.py), so only the feature network's float32 arithmetic can
differ, and that depends on the CPU's kernels. This computes each test image's features
several ways, as different machines could (ONNX Runtime with and without graph
optimisation and on one thread, torch's oneDNN and plain convolutions, and float64 as the
reference), scores them all against one model's bank, and prints the largest relative
score difference between any two float32 ways, and from float64.

    python bench/tolerance.py [--datasets bottle_256 hazelnut_reduced ...]
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from common import MVTEC, PYTHON, ROOT, fit_command, machine, report, run

from ind_knn_ad.config import FitConfig
from ind_knn_ad.features.borders import fitted_border
from ind_knn_ad.features.extractor import FeatureExtractor
from ind_knn_ad.methods import make_scorer
from ind_knn_ad.model_file.store import load_model
from ind_knn_ad.runtime.detector import Detector


def onnx_features(model, images: np.ndarray, **options) -> np.ndarray:
    settings = onnxruntime.SessionOptions()
    settings.log_severity_level = 3
    for name, value in options.items():
        setattr(settings, name, value)
    session = onnxruntime.InferenceSession(
        model.feature_graph, settings, providers=["CPUExecutionProvider"]
    )
    return np.concatenate([session.run(None, {"images": image[None]})[0] for image in images])


def torch_features(model, images: np.ndarray, dtype: torch.dtype, onednn: bool) -> np.ndarray:
    s = model.settings
    settings = FitConfig(
        backbone=s["backbone"],
        layers=tuple(s["layers"]),
        neighbourhood=s["neighbourhood"],
        border=fitted_border(s),
    )
    network = FeatureExtractor(settings, torch.device("cpu")).network.to(dtype)
    network = network.to(memory_format=torch.contiguous_format)
    warnings.filterwarnings("ignore", message="TF32 acceleration")  # mkldnn.flags' note
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=onednn):
        return np.concatenate(
            [network(torch.from_numpy(image[None]).to(dtype)).float().numpy() for image in images]
        )


def measure(dataset: str, work: Path) -> dict[str, str]:
    folder = MVTEC / dataset
    path = work / f"{dataset}.safetensors"
    if not path.is_file():
        run(fit_command(folder, path))
    model = load_model(path)
    detector = Detector(model, "cpu")
    paths = sorted((folder / "test").rglob("*.png"))
    prepared = [detector.preprocess.prepare_file(p) for p in paths]
    images = np.stack([p.array for p in prepared])
    cuts = np.stack([p.cut for p in prepared])
    scorer = make_scorer(model, detector.preprocess, maps=False)
    ways = {
        "onnx": detector.features(images),
        "onnx, no graph optimisation": onnx_features(
            model,
            images,
            graph_optimization_level=onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ),
        "onnx, one thread": onnx_features(model, images, intra_op_num_threads=1),
        "torch oneDNN": torch_features(model, images, torch.float32, True),
        "torch plain": torch_features(model, images, torch.float32, False),
        "float64": torch_features(model, images, torch.float64, False),
    }
    scores = {name: np.array([r.score for r in scorer(f, cuts)]) for name, f in ways.items()}
    exact = scores.pop("float64")
    between = max(
        float(np.max(np.abs(a - b) / b)) for a, b in itertools.combinations(scores.values(), 2)
    )
    worst = max(scores, key=lambda name: np.max(np.abs(scores[name] - exact) / exact))
    return {
        f"{dataset}, {len(paths)} images": (
            f"between float32 ways {between:.1e}; from float64 "
            f"{np.max(np.abs(scores[worst] - exact) / exact):.1e} ({worst})"
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["bottle_256", "hazelnut_reduced", "transistor_reduced"]
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/ind_knn_ad_tolerance"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    figures = {}
    for dataset in args.datasets:
        figures.update(measure(dataset, args.work))
    figures["machine"] = machine()
    command = [PYTHON, ROOT / "bench" / "tolerance.py", "--datasets", *args.datasets]
    report("largest relative score difference the feature arithmetic gives", command, figures)


if __name__ == "__main__":
    main()

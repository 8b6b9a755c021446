#!/usr/bin/env python3
"""Fit and batch scoring on CUDA against the CPU of the same machine: wall times, the
largest relative difference between the scores, and the flags that differ. Scoring on CUDA
needs ONNX Runtime's CUDA build (the `[gpu]` extra); the fit needs torch with CUDA.

    python bench/gpu.py [--data ../shared/data/mvtec/bottle_256]

Says which of the two is missing, and measures the CPU alone, where a side has no CUDA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import BOTTLE, PYTHON, ROOT, WORK, fit_command, machine, report, run


def cuda_sides() -> dict[str, bool]:
    """Whether the fit (torch) and scoring (ONNX Runtime) can run on CUDA here."""
    import onnxruntime
    import torch

    return {
        "fit": torch.cuda.is_available(),
        "scoring": "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    }


def scores(output: str) -> dict[str, tuple[float, str]]:
    rows = (line.rsplit(",", 2) for line in output.splitlines())
    return {name: (float(score), flag) for name, score, flag in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=BOTTLE)
    args = parser.parse_args(argv)
    sides = cuda_sides()
    print(f"CUDA for the fit: {sides['fit']}; for scoring: {sides['scoring']}")
    images = sorted(str(path) for path in (args.data / "test").rglob("*.png"))
    figures: dict[str, str] = {}
    printed: dict[str, str] = {}
    for device in ("cpu", "cuda"):
        fit_device = device if sides["fit"] else "cpu"
        model = WORK / f"gpu_{fit_device}.safetensors"
        command = fit_command(args.data, model)
        command[command.index("--device") + 1] = fit_device
        if device == fit_device:
            figures[f"fit on {device}"] = f"{run(command).seconds:.1f} s"
        if device == "cuda" and not sides["scoring"]:
            continue
        score = [PYTHON, ROOT / "anomaly_detector.py", "--model", model, "--device", device]
        seconds = []
        for _ in range(3):
            result = run([*score, *images])
            seconds.append(result.seconds)
        printed[device] = result.stdout
        figures[f"scoring {len(images)} images on {device}"] = f"best of 3: {min(seconds):.2f} s"
    if "cuda" in printed:
        cpu, cuda = scores(printed["cpu"]), scores(printed["cuda"])
        worst = max(abs(cuda[name][0] / cpu[name][0] - 1) for name in cpu)
        flips = [name for name in cpu if cuda[name][1] != cpu[name][1]]
        figures["largest relative score difference"] = f"{worst:.2e}"
        figures["flags differing"] = str(len(flips))
    figures["machine"] = machine()
    report("CUDA against the CPU", fit_command(args.data, WORK / "gpu.safetensors"), figures)


if __name__ == "__main__":
    main()

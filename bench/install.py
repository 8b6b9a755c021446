#!/usr/bin/env python3
"""Install sizes: a fresh venv with the base install (`pip install .`, scoring only) and,
with --full, one with the fit extra (`pip install '.[fit]'`), each measured with `du`; the
base venv's `anomaly-detector` must print, for every golden model, the bytes the project's
venv prints, and its `make-model` must refuse with exit code 2. Needs the package index.

    python bench/install.py [--full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_golden import GOLDEN, MODELS, write_images  # noqa: E402 - the golden inputs


def venv(folder: Path, requirement: str) -> Path:
    """A fresh venv at `folder` with `requirement` installed; its bin (Scripts) folder."""
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    bin_dir = next(path for path in (folder / "bin", folder / "Scripts") if path.is_dir())
    pip = [bin_dir / "python", "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, requirement], check=True)
    return bin_dir


def size(folder: Path) -> str:
    kib = int(
        subprocess.run(["du", "-sk", folder], capture_output=True, text=True).stdout.split()[0]
    )
    return f"{kib / 1024:.0f} MiB"


def check_base(bin_dir: Path, images: Path) -> None:
    """The base venv scores like the project's and says how to add the fit."""
    names = write_images(images)
    for stem in MODELS:
        model = GOLDEN / f"{stem}.safetensors"
        here = [sys.executable, ROOT / "anomaly_detector.py", "--model", model, *names]
        there = [bin_dir / "anomaly-detector", "--model", model, *names]
        outputs = [subprocess.run(c, cwd=images, capture_output=True).stdout for c in (here, there)]
        if not outputs[0] or outputs[0] != outputs[1]:
            raise SystemExit(f"{stem}: the base install prints other bytes")
    fit = subprocess.run([bin_dir / "make-model"], capture_output=True, text=True)
    if fit.returncode != 2:
        raise SystemExit(f"make-model in the base install exited {fit.returncode}")
    print(f"base install: {len(MODELS)} golden models score byte for byte as here")
    print(f"make-model there: {fit.stderr.strip()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also measure '.[fit]'")
    parser.add_argument("--keep", type=Path, help="build the venvs here and keep them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        base = venv(work / "base", str(ROOT))
        print(f"base venv (pip install .): {size(work / 'base')}")
        check_base(base, work / "images")
        if args.full:
            venv(work / "full", f"{ROOT}[fit]")
            print(f"full venv (pip install '.[fit]'): {size(work / 'full')}")


if __name__ == "__main__":
    main()

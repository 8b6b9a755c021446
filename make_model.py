#!/usr/bin/env python3
"""Fit a PatchCore, PaDiM or SPADE model on good images, evaluate it on test/ when present
(results and a contact sheet beside the model), save one file.

The command lives in `ind_knn_ad.cli.commands.make_model` (installed as `make-model`);
this script only runs it.
"""

from __future__ import annotations

import sys

from ind_knn_ad.cli import environment  # noqa: F401 - first: it may re-run us in the venv

# isort: split
from ind_knn_ad.cli.commands import make_model as main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Score images with a fitted model: prints `file,score,flag` per image (1 = defective).

The command itself is `ind_knn_ad.cli.commands.anomaly_detector` (installed as
`anomaly-detector`); this shim first makes sure it runs in the project's environment.
Exit codes: see ind_knn_ad/cli/exit_codes.py.
"""

from __future__ import annotations

import sys

from ind_knn_ad.cli import environment  # noqa: F401 - first: it may re-run us in the venv

# isort: split
from ind_knn_ad.cli.commands import anomaly_detector as main

if __name__ == "__main__":
    sys.exit(main())

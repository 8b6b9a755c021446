#!/usr/bin/env python3
"""Run make_model.py in this process and print, at the end, the seconds spent in each stage
of the fit: a thread samples the main thread's stack twice a second and counts each sample
for the innermost stage function on it. Only the progress bars' stages carry timings in the
CLI's own output; this covers the rest (held-out threshold, synthetic defects, export).

The code measured is whichever `ind_knn_ad` PYTHONPATH gives (bench/budget.py --before).

    python bench/fit_stages.py MAKE_MODEL_FLAGS...
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

# The automatic settings' own features and coreset count as choosing; elsewhere the
# innermost stage wins (fill_holes runs inside the synthetic defects' first scoring).
OUTERMOST = {"choose": "choosing settings"}
STAGES = {
    "fill_holes": "held-out fill",
    "training_scores": "held-out threshold scores",
    "damaged_scores": "synthetic defects",
    "greedy_coreset": "coreset",
    "export_onnx": "ONNX export",
    "extract_features": "features",
    "evaluate": "testing",
}
PERIOD = 0.5


def stage_of(frame) -> str:
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    outer = [OUTERMOST[name] for name in names if name in OUTERMOST]
    inner = [STAGES[name] for name in names if name in STAGES]
    return (outer or inner or ["other"])[0]


def main() -> int:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # as make_model.py
    from ind_knn_ad.cli import fit

    main_thread = threading.main_thread().ident
    seen: Counter[str] = Counter()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(PERIOD):
            frame = sys._current_frames().get(main_thread)
            seen[stage_of(frame)] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        code = fit.main(sys.argv[1:])
    finally:
        done.set()
        sampler.join()
    total = time.perf_counter() - start
    shares = ", ".join(f"{name} {count * PERIOD:.0f} s" for name, count in seen.most_common())
    print(f"Stages (sampled, wall): {shares}; total {total:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

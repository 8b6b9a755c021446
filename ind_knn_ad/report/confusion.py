"""Confusion matrix of `anomaly_detector.py` output for images laid out as test/<type>/.

`python -m ind_knn_ad.report.confusion scores.csv` reads `file,score,flag` lines; an image is
actually good when its folder is named `good`. Used by `make demo`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ind_knn_ad.io.datasets import GOOD


def confusion_from_csv(path: Path) -> list[list[int]]:
    """[[TN, FP], [FN, TP]] with rows the actual class and columns the predicted flag."""
    matrix = [[0, 0], [0, 0]]
    with open(path, newline="") as stream:
        for file, _score, flag in csv.reader(stream):
            actual = int(Path(file).parent.name != GOOD)
            matrix[actual][int(flag)] += 1
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, help="CSV written by anomaly_detector.py")
    (tn, fp), (fn, tp) = confusion_from_csv(parser.parse_args().scores)
    print("actual \\ predicted   good  defective")
    print(f"good               {tn:6d} {fp:10d}")
    print(f"defective          {fn:6d} {tp:10d}")
    print(f"{fp + fn} of {tn + fp + fn + tp} images misclassified")


if __name__ == "__main__":
    main()

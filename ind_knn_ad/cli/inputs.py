"""Where the scorer's image names come from: the command line, or standard input (`-`),
one name per line or NUL-terminated (`-0`), scored as each arrives.

Names on stdin are bytes, decoded as argv is (surrogateescape), so a name that is not
UTF-8 is printed back byte for byte; empty names are skipped, nothing else is stripped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ind_knn_ad.errors import ImageError
from ind_knn_ad.io.batches import expand_inputs
from ind_knn_ad.methods.base import PatchScores
from ind_knn_ad.runtime.detector import Detector

STDIN = "-"
Scored = tuple[Path | str, PatchScores | ImageError, float, np.ndarray | None]


def names(stream: BinaryIO, separator: bytes) -> Iterator[str]:
    """The names in `stream`, each as soon as its separator (or the end) is read: read1
    returns what a pipe holds now, where read would wait for a full buffer."""
    pending = b""
    while chunk := stream.read1(1 << 16):
        *complete, pending = (pending + chunk).split(separator)
        yield from (os.fsdecode(name) for name in complete if name)
    if pending:
        yield os.fsdecode(pending)


def scored(
    detector: Detector, inputs: Sequence[str], stdin: BinaryIO, nul: bool
) -> Iterator[Scored]:
    """Every input's result in order: the command line's in batches, decoding ahead; or,
    for `-`, each name read from `stdin` scored alone, so that its line needs no later name
    (a camera's folder watched with inotifywait). Scores do not depend on batching."""
    if list(inputs) != [STDIN]:
        yield from detector.score_files_timed(expand_inputs(inputs))
        return
    for name in names(stdin, b"\0" if nul else b"\n"):
        yield from detector.score_files_timed(expand_inputs([name]), 1)

"""Decoding images in background threads while the model computes on the previous batch."""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ind_knn_ad.errors import ImageError
from ind_knn_ad.io.images import is_image_file, shown_name
from ind_knn_ad.io.limits import SCORE_BYTES_PER_PIXEL, DecodeBudget, decode_budget
from ind_knn_ad.io.preprocess import Prepared, Preprocess

Item = tuple[Path | str, "Prepared | ImageError"]


def images_per_batch(size: tuple[int, int], at_224: int, least: int = 1) -> int:
    """Images of (width, height) per network batch holding the pixels of `at_224` images
    of 224 px, and at least `least`: activation memory grows with pixels per batch (16
    images of 1024 px peaked at 6 GB while fitting, 2 at 1.9 GB, and ran faster)."""
    return max(least, at_224 * 224 * 224 // (size[0] * size[1]))


def expand_inputs(paths: Iterable[Path | str]) -> list[Path | str]:
    """Command-line inputs as image files: a directory becomes the image files under it
    (recursively, sorted; symbolic links to directories are not followed).

    Anything else is kept as given, so a missing or unreadable file is still reported by
    the loader under the name the user typed; so is a path that cannot be looked at (a
    name too long, a folder on the way that cannot be searched), and a directory that
    holds no images or that cannot be listed, in whole or in part, and the loader says which.
    """
    files: list[Path | str] = []
    for path in paths:
        # os.path.isdir is False for a path it cannot look at; Path.is_dir raised for a
        # name too long or an unsearchable folder, which stopped the whole run.
        if not os.path.isdir(path):
            files.append(path)
            continue
        found, unreadable = _image_files_under(path)
        files.extend(sorted(found))
        files.extend(unreadable)  # the loader reports each: permission denied
        if not found and not unreadable:
            files.append(path)  # the loader reports: no image files
    return files


# Failures to look a path up that the loader words itself (no such file, permission denied).
_LOADER_WORDS = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM}


def _lookup_error(path: Path | str) -> ImageError | None:
    """An ImageError naming the path, in the system's words, if it cannot be looked up for
    a reason the loader does not word itself ("file name too long", "too many levels of
    symbolic links"): the loader would call it an image it cannot decode."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno not in _LOADER_WORDS and error.strerror:
            reason = error.strerror[:1].lower() + error.strerror[1:]
            return ImageError(f"{shown_name(path)}: {reason}")
    return None


def _image_files_under(top: Path | str) -> tuple[list[Path], list[str]]:
    """The image files under `top` and the folders that could not be listed. A loop with
    its own stack, not os.walk, whose recursion fails on folders nested 1,000 deep."""
    found: list[Path] = []
    unreadable: list[str] = []
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        is_folder = entry.is_dir()
                    except OSError:
                        is_folder = False
                    if is_folder:
                        if not entry.is_symlink():  # links to folders are not followed
                            stack.append(entry.path)
                    elif is_image_file(Path(entry.name)):
                        found.append(Path(entry.path))
        except OSError as error:
            unreadable.append(error.filename if error.filename is not None else folder)
    return found, unreadable


def _load(preprocess: Preprocess, path: Path | str, budget: DecodeBudget) -> Prepared | ImageError:
    unusable = _lookup_error(path)
    if unusable is not None:
        return unusable
    try:
        with budget.ticket(shown_name(path)) as reserve:
            return preprocess.prepare_file(path, reserve)
    except ImageError as error:
        return error
    except MemoryError:  # this image alone: the others are still scored
        return ImageError(f"{shown_name(path)}: not enough memory to preprocess the image")


def preprocessed_batches(
    paths: Iterable[Path | str],
    preprocess: Preprocess,
    batch_size: int = 16,
    workers: int = 2,
) -> Iterator[Sequence[Item]]:
    """Yield batches of (path, Prepared or ImageError), in input order: each file is
    decoded here once, and what later steps need of it travels with it.

    Pillow releases the GIL while decoding and resizing, so threads overlap with the
    backbone. At most two batches are in flight, which bounds memory for any number of
    files; a bad file becomes an ImageError in its slot instead of stopping the run.
    Decoders share the memory free when this starts, less what a batch's feature graph and
    the run's threads take (`limits.DecodeBudget`): large images decode one at a time where
    memory is short, and one that cannot be decoded in it gets its own ImageError.
    """
    paths = iter(paths)
    activations = SCORE_BYTES_PER_PIXEL * preprocess.size[0] * preprocess.size[1] * batch_size
    budget = DecodeBudget(decode_budget(activations, workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Path | str, Future]] = deque()

        def fill() -> None:
            while len(pending) < 2 * batch_size:
                try:
                    path = next(paths)
                except StopIteration:
                    return
                pending.append((path, pool.submit(_load, preprocess, path, budget)))

        fill()
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            fill()
            yield [(path, future.result()) for path, future in batch]


def stack(
    items: Sequence[Item],
) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
    """Positions of the decoded items, their network inputs stacked into one (B, 3, H, W)
    float32 batch and their cuts into one (B, H, W, 3) uint8 batch (part regions are found
    on the cuts); None and None when no item decoded."""
    good = [i for i, (_, value) in enumerate(items) if isinstance(value, Prepared)]
    if not good:
        return good, None, None
    prepared = [items[i][1] for i in good]
    return good, np.stack([p.array for p in prepared]), np.stack([p.cut for p in prepared])

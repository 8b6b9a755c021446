"""Orientation augmentation: turned and flipped copies (views) of the training images.

PatchCore may choose its bank from the patches of every training image's views as well, so
that a round part lying at another angle finds its like in the bank. It is off by default:
it costs feature and coreset time by the view count and teaches the bank that a turned
part is good, which is wrong for a part whose pose is checked (bench/augment.py,
docs/benchmarks.md "Orientation augmentation").

A view works on a batch of network inputs, (B, 3, H, W) float32: normalisation is per
channel, so turning a normalised input is normalising the turned cut.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

View = Callable[[np.ndarray], np.ndarray]
NONE = "none"


def mirror(batch: np.ndarray) -> np.ndarray:
    """Left and right swapped."""
    return batch[..., ::-1]


def upside_down(batch: np.ndarray) -> np.ndarray:
    """Top and bottom swapped."""
    return batch[..., ::-1, :]


def turn(quarters: int) -> View:
    """A turn by `quarters` quarter turns; a turned non-square input would change shape,
    and its features could not share the image's grid, so it is refused."""

    def turned(batch: np.ndarray) -> np.ndarray:
        height, width = batch.shape[-2:]
        if height != width:
            raise ValueError(
                f"rotations need a square input, not {width}x{height}: use flips, or a square crop"
            )
        return np.rot90(batch, quarters, axes=(-2, -1))

    return turned


def _mirrored(view: View) -> View:
    return lambda batch: view(mirror(batch))


_TURNS = (turn(1), turn(2), turn(3))

# Each set's views, the image itself not among them.
VIEW_SETS: dict[str, tuple[View, ...]] = {
    NONE: (),
    "flips": (mirror, upside_down),
    "rotations": _TURNS,
    # The 7 symmetries of the square besides the identity: 3 turns, and the mirror image
    # alone and under each turn.
    "dihedral": (*_TURNS, mirror, *map(_mirrored, _TURNS)),
}


def views_of(name: str) -> tuple[View, ...]:
    """The views of the set called `name`; ValueError naming the sets for another name."""
    if name not in VIEW_SETS:
        raise ValueError(f"augment must be one of {', '.join(VIEW_SETS)}, not {name!r}")
    return VIEW_SETS[name]


def with_views(batch: np.ndarray, views: tuple[View, ...]) -> np.ndarray:
    """(B, 3, H, W) inputs to (B * (1 + len(views)), 3, H, W): each image, then its views."""
    if not views:
        return batch
    every = np.stack([batch, *(view(batch) for view in views)], axis=1)
    return every.reshape(-1, *batch.shape[1:])

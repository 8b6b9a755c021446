"""A PatchCore fit's peak memory from its settings and image count, known before any work:
whether it holds every training feature at once, streams them (`patchcore.streamed`) or
cannot run here at all.

The estimate counts what grows with the data, on top of FIT_PROCESS_BYTES (the interpreter,
torch, the backbone, the exported graph) and a feature batch's activations
(`limits.FIT_BYTES_PER_PIXEL`). bench/stream_fit.py checks it against measured peaks.
Torch-free: it needs the backbone's channels and strides alone (`cli.preflight`).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from ind_knn_ad.io.limits import (
    FIT_ADDRESS_PER_PIXEL,
    FIT_ADDRESS_SPACE,
    FIT_BYTES_PER_PIXEL,
    available_memory,
    room,
)
from ind_knn_ad.methods.patchcore.held_out import FILL_IMAGES, HOLDOUT_IMAGES
from ind_knn_ad.search.coreset import PROJECTION_DIM
from ind_knn_ad.search.two_stage import OVERSAMPLE

FLOAT = 4
# The fit's resident memory besides its data and a batch's activations: Python, torch, the
# backbone, the ONNX export, the test images' scoring. Rounded up so that the estimate
# stays above the peaks measured at 200 to 10,000 photos, which vary by about 0.2 GB from
# one run to the next (bench/stream_fit.py).
FIT_PROCESS_BYTES = 800_000_000
# Greedy k-center holds, per row, its projection twice (the projection and the regrouped
# copy, `k_center._Greedy`) and two float32 distances.
K_CENTER_ROW_BYTES = 2 * FLOAT * PROJECTION_DIM + 2 * FLOAT
# A fit whose peak with every feature held would pass this streams, so the peak stays
# bounded whatever the image count (10,000 photos within 4 GB: bench/stream_fit.py).
IN_MEMORY_BYTES = 3_000_000_000
# Training features held per chunk of a streamed fit.
CHUNK_BYTES = 128_000_000
# `limits.FIT_ADDRESS_SPACE` and its cost per pixel sat at least 140 MB above each of the
# peaks they were measured on, those small fits' data included: under an address-space
# limit, data up to this much is already counted there.
ADDRESS_SLACK = 128_000_000


@dataclass(frozen=True)
class FitShape:
    """What a fit's data is made of: training images, rows (patches, views included) and
    channels per image, the bank's rows, and the pixels of one batch's network inputs."""

    images: int
    image_rows: int
    own_rows: int  # an image's own patches, without its views
    channels: int
    bank_rows: int
    batch_pixels: int

    @property
    def image_bytes(self) -> int:
        return self.image_rows * self.channels * FLOAT

    @property
    def chunk_images(self) -> int:
        """Training images per chunk of a streamed fit."""
        return max(1, min(self.images, CHUNK_BYTES // self.image_bytes))

    def _held_out(self) -> int:
        """The held-out scoring's bank, fillers and the two search banks built from them."""
        return 4 * self.bank_rows * self.channels * FLOAT

    @property
    def base(self) -> int:
        """Bytes besides the data: the process and one batch's activations."""
        return FIT_PROCESS_BYTES + FIT_BYTES_PER_PIXEL * self.batch_pixels

    def in_memory(self) -> int:
        """Peak bytes with every training feature held at once."""
        rows = self.images * self.image_rows
        work = max(rows * K_CENTER_ROW_BYTES, self._held_out())
        return self.base + self.images * self.image_bytes + work

    def streamed(self) -> int:
        """Peak bytes streaming: one chunk and its greedy k-center, the union of the chunks'
        picks, the images held-out scoring reads, and the held-out scoring's banks."""
        chunk = self.chunk_images * self.image_rows
        union = OVERSAMPLE * self.bank_rows * (self.channels + PROJECTION_DIM) * FLOAT
        kept = min(self.images, FILL_IMAGES) * self.image_bytes
        kept += min(self.images, HOLDOUT_IMAGES) * self.own_rows * self.channels * FLOAT
        work = max(chunk * (self.channels * FLOAT + K_CENTER_ROW_BYTES) + union, self._held_out())
        return self.base + kept + work


@dataclass(frozen=True)
class Plan:
    """How a fit runs here: `streamed` or not, the peaks estimated both ways, the memory
    there is, and `problem` (why not at all) when neither fits."""

    streamed: bool
    in_memory: int
    streaming: int
    have: int
    chunk_images: int
    problem: str | None = None

    @property
    def stream(self) -> int | None:
        """`train`'s `stream`: images per chunk where the fit streams, else None."""
        return self.chunk_images if self.streamed else None

    def line(self) -> str:
        """One line for the log: the choice and the figures behind it."""
        if self.streamed:
            way = f"streamed, {self.chunk_images} images a chunk: about {self.streaming / 1e9:.2g}"
        else:
            way = f"in memory: about {self.in_memory / 1e9:.2g}"
        return f"Fit {way} GB of the {self.have / 1e9:.3g} GB available."


def memory_here(shape: FitShape, width: int, height: int) -> int:
    """Bytes a fit of `shape` at (width, height) px may take now: the memory the kernel and
    any cgroup leave free, plus what this process already holds (where the kernel does not
    say: all of it); under an address-space limit, no more than its base and what the limit
    leaves beyond the mappings such a fit makes anyway (`limits.FIT_ADDRESS_SPACE`, which
    counts the base's)."""
    _space, free = room()
    have = available_memory() if free is None else free + _resident()
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        mapped = FIT_ADDRESS_SPACE + FIT_ADDRESS_PER_PIXEL * width * height
        have = min(have, shape.base + ADDRESS_SLACK + max(0, soft - mapped))
    return have


def plan(shape: FitShape, have: int, can_stream: bool = True) -> Plan:
    """In memory while that stays within IN_MEMORY_BYTES and `have`; else streamed (where
    the method can) within `have`; else a problem that says what it would need."""
    whole, streaming = shape.in_memory(), shape.streamed()
    if whole <= min(have, IN_MEMORY_BYTES) or (whole <= have and not can_stream):
        return Plan(False, whole, streaming, have, shape.chunk_images)
    if can_stream and streaming <= have:
        return Plan(True, whole, streaming, have, shape.chunk_images)
    need = min(whole, streaming) if can_stream else whole
    return Plan(
        can_stream,
        whole,
        streaming,
        have,
        shape.chunk_images,
        f"a fit on {shape.images} images needs about {need / 1e9:.3g} GB, more than the "
        f"{have / 1e9:.3g} GB of memory here",
    )


def _resident() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0

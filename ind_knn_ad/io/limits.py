"""How large an input this machine can take, from its memory and measured costs per pixel.

A size is refused up front, with one line saying what it would need, rather than failing
minutes later when the kernel kills the process. The costs are peaks per pixel of network
input measured on the CPU (README, Performance), rounded up:

- scoring: one 1024x1024 image peaked at 0.83 GB for the whole process, so 800 bytes per
  pixel holds with room to spare for the graph's activations and the search;
- fitting: 2 images of 1024x1024 per batch peaked at 1.9 GB, about 900 bytes per pixel of
  one image, and a batch holds at least one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ind_knn_ad.errors import ImageError

try:
    import resource
except ImportError:  # Windows: no address-space limits to read
    resource = None

SCORE_BYTES_PER_PIXEL = 800
FIT_BYTES_PER_PIXEL = 900
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


def address_space_limit() -> int | None:
    """The soft address-space limit (ulimit -v, prlimit --as) in bytes; None where there is
    none, or no such limit on this system (Windows)."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def available_memory() -> int:
    """Bytes this process may use: physical memory, less where an address-space limit
    (ulimit -v, prlimit --as) or a cgroup limit (containers) says less."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):  # AttributeError: no sysconf (Windows)
        limit = 1 << 62
    soft = address_space_limit()
    if soft is not None:
        limit = min(limit, soft)
    try:
        text = _CGROUP_LIMIT.read_text().strip()
    except OSError:
        text = "max"
    if text.isdigit():
        limit = min(limit, int(text))
    return limit


# Address space is not memory: what an address-space limit (ulimit -v, prlimit --as)
# counts is every mapping, and a fit maps far more than it touches. Importing torch maps
# 3.2 GB, timm and SciPy 0.5 GB more (VmSize). Fitting efficientnet_lite0 on 2 cores
# (VmPeak, against VmHWM resident) peaked at 4.83 GB (1.29 GB resident) at 224 px on 10
# images (`--image-score max --coreset 0.1`), 5.99 GB (2.56) at 512 px on the same, and
# 4.71 GB (1.02) at 96 px on the 40 images and test set of the sample data: 5,500 bytes
# per pixel of one network input between the first two, over 4.8 GB that holds all three.
# Exporting the feature graph (features/export.py) maps ONNX and ONNX Runtime too, 72 MB
# more. On an Intel Xeon the same fits peaked up to 260 MB higher, and OpenBLAS's kernels
# for other CPUs (OPENBLAS_CORETYPE) move them by up to 140 MB: at 5.1 GB the estimate stays
# above every peak by more than `patchcore.memory.ADDRESS_SLACK` (bench/address_space.py).
FIT_ADDRESS_SPACE = 5_100_000_000
FIT_ADDRESS_PER_PIXEL = 5_500


def fit_address_space_problem(width: int, height: int) -> str | None:
    """None unless an address-space limit is below what a fit at this input size maps
    (FIT_ADDRESS_SPACE), else why: refused up front, where the fit would crash mid-way."""
    soft = address_space_limit()
    need = FIT_ADDRESS_SPACE + FIT_ADDRESS_PER_PIXEL * width * height
    if soft is None or need <= soft:
        return None
    return (
        f"a fit at {width}x{height} px maps about {need / 1e9:.3g} GB of address space "
        f"(torch alone maps 3.2 GB), more than the {soft / 1e9:.3g} GB address-space limit "
        "here (ulimit -v, prlimit --as)"
    )


def input_too_large(width: int, height: int, bytes_per_pixel: int) -> str | None:
    """None if one (width, height) network input fits in memory, else why not."""
    need = width * height * bytes_per_pixel
    have = available_memory()
    if need <= have:
        return None
    return (
        f"a {width}x{height} px input needs about {need / 1e9:.3g} GB per image, more than "
        f"the {have / 1e9:.3g} GB of memory here"
    )


# Decoding in the background (io/batches.py) shares what is free with the rest of the run.
# Measured while scoring 224 px inputs in batches of 8 on 2 cores (VmSize and VmRSS in
# /proc/self/status, from the model loaded to the first batch scored): the process grew by
# 669 MB of address space and 268 MB of memory. The feature graph's activations, at
# SCORE_BYTES_PER_PIXEL, account for 321 MB. The search's threads map their BLAS buffers
# before decoding starts (`search.nearest.start_threads`: 181 MB for 2), so what remains is
# each decoder thread's stack and malloc arena, 72 MB of address space of which little is
# touched.
THREAD_ADDRESS_SPACE = 80 << 20
# Decoding an image that `images.decode_need` counts as N bytes peaked at up to 1.4 N
# (Pillow keeps 8-bit RGB in 4 bytes a pixel), preprocessing included.
DECODE_PEAK_RATIO = 1.5
# The decoders may always hold this much, whatever the estimates leave: they are generous
# (a batch of 8 scored within 900 MB of address space, where the budget came to nothing).
DECODE_FLOOR = 32 << 20


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def room() -> tuple[int | None, int | None]:
    """(address space, memory) this process can still take now, in bytes, None where
    unbounded or unknown: what an address-space limit leaves beyond what is mapped, and
    the least of the kernel's available memory and a cgroup limit's room."""
    space = None
    soft = address_space_limit()
    mapped = _status_bytes("VmSize")
    if soft is not None and mapped is not None:
        space = max(0, soft - mapped)
    memory = _memory_available()
    try:
        top = _CGROUP_LIMIT.read_text().strip()
        used = (_CGROUP_LIMIT.parent / "memory.current").read_text().strip()
    except OSError:
        top = used = "max"
    if top.isdigit() and used.isdigit():
        left = max(0, int(top) - int(used))
        memory = left if memory is None else min(memory, left)
    return space, memory


def decode_budget(activations: int, threads: int) -> int:
    """Bytes that decoding threads may hold at once: the room left now, less the feature
    graph's `activations` and the address space of the `threads` the run has yet to start."""
    space, memory = room()
    budget = 1 << 62
    if space is not None:
        budget = min(budget, space - activations - threads * THREAD_ADDRESS_SPACE)
    if memory is not None:
        budget = min(budget, memory - activations)
    return max(0, budget)


class DecodeBudget:
    """Memory shared by decoding threads. Each decode takes what its header says decoding
    will hold (`images.decode_need`, times DECODE_PEAK_RATIO) before decoding, waits while
    others hold too much, and gives it back when done; one that needs more than the whole
    budget is refused, its own error line, and the others are still decoded."""

    def __init__(self, total: int) -> None:
        self.total = max(total, DECODE_FLOOR)
        self.held = 0
        self._changed = threading.Condition()

    @contextmanager
    def ticket(self, name: str) -> Iterator[Callable[[int], None]]:
        """A `reserve` function for `images.load_image` for the file `name`; everything it
        took is given back when the `with` block ends."""
        taken = 0

        def reserve(need: int) -> None:
            nonlocal taken
            cost = int(need * DECODE_PEAK_RATIO)
            with self._changed:
                if taken + cost > self.total:
                    raise ImageError(
                        f"{name}: takes about {(taken + cost) / 1e6:.0f} MB to decode, more than "
                        f"the {self.total / 1e6:.0f} MB of memory free for decoding here"
                    )
                while taken == 0 and self.held and self.held + cost > self.total:
                    self._changed.wait()
                self.held += cost
                taken += cost

        try:
            yield reserve
        finally:
            with self._changed:
                self.held -= taken
                self._changed.notify_all()

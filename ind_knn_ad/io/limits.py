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
import resource
from pathlib import Path

SCORE_BYTES_PER_PIXEL = 800
FIT_BYTES_PER_PIXEL = 900
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


def available_memory() -> int:
    """Bytes this process may use: physical memory, less where an address-space limit
    (ulimit -v, prlimit --as) or a cgroup limit (containers) says less."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        limit = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    try:
        text = _CGROUP_LIMIT.read_text().strip()
    except OSError:
        text = "max"
    if text.isdigit():
        limit = min(limit, int(text))
    return limit


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

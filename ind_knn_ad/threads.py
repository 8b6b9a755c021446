"""How many threads the library runs, in one place: cores for its own pools, and one BLAS
thread where products are too small to share.

Small matrix products split between BLAS threads only add a wait for the other thread, which
on a busy machine costs milliseconds per call; the callers run many of them, each on one
thread, and get their parallelism from their own pools.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager

_cap: int | None = None


def cap_threads(threads: int | None) -> None:
    """At most `threads` threads in the library's own pools from now on (None: no cap), for
    several scorers sharing a machine, each given its share of the cores
    (`runtime.ray_scoring`): the process-wide setting, as the pools are the process's."""
    global _cap
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    _cap = threads


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask where there is one), at most the
    cap of `cap_threads`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores if _cap is None else min(cores, _cap)


@functools.cache
def _controller():  # -> threadpoolctl.ThreadpoolController; finding the libraries costs ms
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[object]:
    """BLAS on one thread inside the `with` block (every BLAS library loaded so far)."""
    return _controller().limit(limits=1, user_api="blas")

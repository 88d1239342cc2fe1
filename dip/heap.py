"""glibc's malloc told to keep freed memory during a step (an execution switch, ``RestoreConfig.keep_heap``).

A CPU tensor's memory comes from malloc. glibc serves every block above its mmap threshold by mmap and
unmaps it when it is freed; the threshold adapts upwards to the blocks freed, but never past 32 MiB
(``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit). The paper network's fp32 activations and gradients at
256x256 are larger: (1, 128, 256, 256) is 33.5 MB, (1, 132, 256, 256) 34.6 MB. So every step maps
them anew and the kernel zeroes them page by page on first touch: measured on a 2-core AMD EPYC with
AVX2 only, the fast path's fp32 step faulted about 254,000 pages (1 GB) a step and spent about half of
its 2 s in the kernel (docs/speed.md, "Page faults and keep_heap").

Inside :func:`kept_heap` no block is mmapped and the heap's top is never trimmed, so freed blocks stay
in the process for the next step's tensors. The settings are process-wide, so they are put back after
each step (as the CUDA flags are, ``dip.trainer.step_context``): the other trainers of one process (the
speed benchmark's anchor and reference path) run as under glibc's defaults (:data:`RESTORED`). Nothing
computed changes, only where memory comes from; what it costs is that the process keeps its peak memory
(about 1 GB at 256x256) between steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

NEVER = 2**31 - 1  # mallopt takes an int
KEPT = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: NEVER}
# What is put back after a step: glibc's defaults as its adaptive thresholds stand once blocks of 32 MiB
# and more have been freed (the mmap threshold at its 32 MiB ceiling, the trim threshold twice that; mmap
# allowed again). Any mallopt call freezes the adaptation, so they are set explicitly. Trimming off for
# good would also spare the step the pages a trim gives back when its caller frees what it returned
# (measured: about 30,000 faults a step, about 100 ms), but it would spare the other trainers of the
# process theirs too: the speed benchmark's anchor ran up to 1.3x faster after a kept-heap step.
RESTORED = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt and gnu_get_libc_version), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018 (attribute lookups: AttributeError if absent)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def available() -> bool:
    """Whether this process's malloc is glibc's, the only one :func:`kept_heap` knows how to tune."""
    return _glibc() is not None


def _set(settings: dict[int, int]) -> None:
    libc = _glibc()
    for parameter, value in settings.items():
        if libc.mallopt(parameter, value) != 1:
            raise OSError(f"mallopt({parameter}, {value}) failed")


@contextlib.contextmanager
def kept_heap() -> Iterator[None]:
    """Inside the block, freed memory stays in the heap (no mmap, no trim); after it, glibc's steady-state
    defaults (:data:`RESTORED`). Raises RuntimeError where malloc is not glibc's."""
    if not available():
        raise RuntimeError("keep_heap needs glibc's malloc (Linux with glibc)")
    _set(KEPT)
    try:
        yield
    finally:
        _set(RESTORED)

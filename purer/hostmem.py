"""Host memory: let the process reuse freed blocks instead of returning them to the OS.

glibc's malloc serves blocks above a (dynamic) threshold with ``mmap`` and unmaps them when freed,
and trims the top of its heap. A CPU training loop that allocates and frees the same activation
tensors every iteration then pays a page fault, and the zeroing of a fresh page, for every 4 KiB of
them, every iteration: about 40,000 faults per ECI meta-iteration at the CIFAR-FS settings, which is
~15% of the iteration (benchmarks/README.md). :func:`retain_freed_memory` raises both thresholds so
that freed memory stays in the process and is reused; the resident size then stays at its peak.

The ``purer`` command line calls it once at start-up. Other platforms (no glibc) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
RETAIN_LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap; the heap is never trimmed below this


def retain_freed_memory(limit: int = RETAIN_LIMIT) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit`` bytes (process-wide, irreversible).

    Returns:
        True if both settings were accepted, False where there is no glibc ``mallopt`` (or it
        refused a value); nothing else changes then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    accepted = mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
    logger.debug("malloc: retain freed blocks up to %d bytes: %s", limit, "on" if accepted else "refused")
    return accepted

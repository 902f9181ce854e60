"""Give freed memory back to the operating system between the steps of a run.

``carto run`` executes every asset of a study in one process, one after another. glibc's
``malloc`` keeps memory that Python, numpy, polars and torch free in its heaps (one per thread
that allocated it) for reuse, so without a trim the process's resident size after a step stays
near that step's peak, and the next step, allocating from other threads or in other sizes, can
add to it. :func:`release_memory` collects garbage and asks ``malloc`` to return every free page
(``malloc_trim(0)``); the definitions run it after every asset step and stages call it after
a large transient (e.g. the receptive-field measurement).

Where the C library is not glibc (macOS, musl) only the garbage collection runs.

This module never imports dagster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Collect garbage and return free heap pages to the OS; True if ``malloc_trim`` ran."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

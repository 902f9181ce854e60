"""release_memory: freed heap pages go back to the OS (glibc), garbage is collected anywhere."""

import sys
from pathlib import Path

import numpy as np
import pytest

from carto_assets.runtime.memory import release_memory


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_freed_small_allocations_leave_the_process():
    # Earlier tests in this worker can leave free heap pages resident, which the blocks below
    # would reuse without growing the process: return them first (seen under xdist).
    release_memory()
    start = _resident_mb()
    # 300 MB in 80 kB arrays: below malloc's mmap threshold, so they live in its heap.
    blocks = [np.ones(10_000) for _ in range(3_750)]
    assert _resident_mb() > start + 250
    del blocks
    if not release_memory():
        pytest.skip("the C library has no malloc_trim")
    assert _resident_mb() < start + 50


def test_release_memory_collects_cycles():
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = weakref.ref(a)
    del a, b
    gc.disable()
    try:
        release_memory()
    finally:
        gc.enable()
    assert probe() is None

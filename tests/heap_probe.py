"""How much of freed tile-sized arrays stays resident (run in a fresh process or a helper)."""

import numpy as np


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def freed_arrays_resident_mb() -> float:
    """MB still resident after 200 MB of 6 MiB arrays are freed behind one still in use.

    A freed 24 MiB block first raises glibc's own threshold for blocks of their own to 24 MiB
    (its default behaviour), so without :func:`deeplab_geo.processes.bound_heap` the 6 MiB
    arrays come from the heap and stay resident; the newest array stays in use, as the next
    batch's arrays do.
    """
    big = np.ones(24 << 20, np.uint8)
    del big
    before = resident_mb()
    blocks = [np.ones(6 << 20, np.uint8) for _ in range(34)]  # tile-sized arrays
    kept = blocks.pop()
    del blocks
    grown = resident_mb() - before
    assert kept.size  # in use until here
    return grown

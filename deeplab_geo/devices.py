"""Which accelerators this machine has, asked of the CUDA driver itself (no torch needed).

A run on ONNX Runtime then never imports torch (half a gigabyte of memory and seconds of
start-up for its CUDA build) just to learn that there is no GPU.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver, a device or a working ``cuInit``).

    ``CUDA_VISIBLE_DEVICES`` is honoured, as the driver honours it.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value

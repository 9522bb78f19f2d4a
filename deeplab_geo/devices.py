"""Which accelerators this machine has, asked of the CUDA driver itself (no torch needed).

A run on ONNX Runtime then never imports torch (half a gigabyte of memory and seconds of
start-up for its CUDA build) just to learn that there is no GPU.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


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


def resolve_device(device: str, setting: str = "model.device") -> str:
    """The device a ``device`` setting names, as torch spells it: ``auto`` is ``cuda`` when
    the driver reports a device, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` stay as they
    are once the device is known to exist.

    Every ``device`` setting of the package (``model.device``, ``crf.device``,
    ``train.device``, ``evaluate.device``) goes through here; ``setting`` names it in errors.

    Raises:
        ConfigError: CUDA is asked for and there is no such device.
    """
    from deeplab_geo.errors import ConfigError

    count = cuda_device_count()
    if device == "auto":
        return "cuda" if count else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda" and (int(index) if index else 0) >= count:
        raise ConfigError(f"{setting} {device}: no such CUDA device ({count} available); "
                          f"use {setting}: cpu or auto")
    return device


def torch_device(device: str, setting: str = "model.device") -> Any:
    """:func:`resolve_device` as a ``torch.device`` (imports torch)."""
    import torch

    return torch.device(resolve_device(device, setting))

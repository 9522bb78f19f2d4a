"""Helper processes: started with ``spawn`` and ended with the process that started them.

``spawn`` (not ``fork``) is safe next to threaded libraries (torch, ONNX Runtime, GDAL, dask's
thread pool): a forked child inherits locks that other threads may hold.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def die_with_parent() -> None:
    """Ask Linux to end this process when the process that started it dies (e.g. ``kill -9``)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def spawn_pool(processes: int, initializer: Callable[..., None] | None = None,
               initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A ``spawn`` process pool whose workers die with this process, then run ``initializer``.

    Workers start on demand, when a task finds none idle.
    """
    return ProcessPoolExecutor(max_workers=processes,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start, initargs=(initializer, initargs))


def _start(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def trim_heap() -> bool:
    """Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

    Freed memory otherwise stays resident in this process; the pipeline calls this between
    stages so that the next one (and the helper processes it starts) does not add to the peak
    of the one before. Returns whether anything was released; a no-op off glibc.
    """
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False

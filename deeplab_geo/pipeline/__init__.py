"""Running a pipeline: one raster (:mod:`~deeplab_geo.pipeline.runner`), the work on each batch
of windows (:mod:`~deeplab_geo.pipeline.windows`, with test-time augmentation in
:mod:`~deeplab_geo.pipeline.tta`), folders of rasters (:mod:`~deeplab_geo.pipeline.batch`) and
dask.distributed clusters (:mod:`~deeplab_geo.pipeline.cluster`).

``run`` and ``RunResult`` are importable from here, on first use (importing a submodule such
as ``tta`` does not import the runner).
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {"run": "deeplab_geo.pipeline.runner", "RunResult": "deeplab_geo.pipeline.runner",
        "run_batch": "deeplab_geo.pipeline.batch"}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplab_geo.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""deeplab-geo: DeepLab segmentation of large aerial and satellite rasters.

The pipeline reads a raster, cuts it into overlapping windows, runs a DeepLab model through a
pluggable backend, refines each tile with a fully connected CRF, stitches the tiles into a
georeferenced class raster and vectorizes it into GeoPackage polygons.

The everyday API is importable from here; each name is imported on first use, so that
``import deeplab_geo`` stays cheap (no torch, dask or xarray until they are needed)::

    import deeplab_geo
    result = deeplab_geo.run(deeplab_geo.load_pipeline("pipelines/landcover.yaml"))
    ds = deeplab_geo.segment(image)          # an xarray DataArray in, a lazy Dataset out
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# (``train`` and ``vectorize`` stay in their modules: those names are submodules here.)
_API = {
    "load_pipeline": "deeplab_geo.config",
    "load_train_config": "deeplab_geo.config",
    "PipelineConfig": "deeplab_geo.config",
    "run": "deeplab_geo.pipeline.runner",
    "plan": "deeplab_geo.pipeline.runner",
    "RunResult": "deeplab_geo.pipeline.runner",
    "run_batch": "deeplab_geo.pipeline.batch",
    "segment": "deeplab_geo.xarray",
    "evaluate_raster": "deeplab_geo.tools.evaluate",
    "write_sample": "deeplab_geo.tools.sample",
    "DeepLabGeoError": "deeplab_geo.errors",
}

__all__ = ["__version__", "shutdown", *_API]


def shutdown() -> None:
    """Stop this process's helper processes and forget its loaded models (tests, benchmarks
    and long-lived hosts call it between jobs; the next run starts them again)."""
    import sys

    from deeplab_geo import plugins, processes

    processes.shutdown()
    if "deeplab_geo.crf.lattice" in sys.modules:  # without importing torch where it is not
        sys.modules["deeplab_geo.crf.lattice"].forget_lattices()
    for entry in plugins.registered_backends().values():
        release = getattr(entry.backend, "release", None)
        if callable(release):
            release()


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplab_geo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""The public top level: the everyday API from ``import deeplab_geo``, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import deeplab_geo


def test_import_is_cheap_and_every_name_resolves():
    code = ("import sys, deeplab_geo; heavy = [m for m in ('torch', 'dask', 'xarray', "
            "'rasterio') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    for name in deeplab_geo.__all__:
        assert getattr(deeplab_geo, name) is not None
    from deeplab_geo.pipeline.runner import run
    from deeplab_geo.xarray import segment

    assert deeplab_geo.run is run and deeplab_geo.segment is segment
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deeplab_geo.nope  # noqa: B018


def test_shutdown_stops_pools_and_forgets_loaded_models(tiny_checkpoint):
    from deeplab_geo.backends import torch_backend
    from deeplab_geo.plugins import get_backend
    from deeplab_geo.processes import worker_pool

    pool = worker_pool(1)
    assert pool.map(int, [("5",)]) == [5]
    first = get_backend("torch").load(str(tiny_checkpoint), device="cpu")
    deeplab_geo.shutdown()
    assert pool._executor is None and torch_backend._load_cached.cache_info().currsize == 0
    assert get_backend("torch").load(str(tiny_checkpoint), device="cpu") is not first
    assert worker_pool(1).map(int, [("6",)]) == [6]  # a new pool on the next use
    deeplab_geo.shutdown()

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
    from deeplab_geo.pipeline import run
    from deeplab_geo.xarray import segment

    assert deeplab_geo.run is run and deeplab_geo.segment is segment
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deeplab_geo.nope  # noqa: B018

"""Raster input checks and transactional output.

Outputs of a run are written into a hidden staging folder inside the output directory and moved
to their final names only when the whole run has succeeded; on any failure the staging folder is
removed, so no half-written GeoTIFF or GeoPackage is ever left under a final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from deeplab_geo.errors import InputError, OutputError, RasterReadError

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading, with one-line errors for the usual problems."""
    path = Path(path)
    if not path.exists():
        raise RasterReadError(f"{path}: input raster not found; check the input path")
    if path.is_dir():
        raise RasterReadError(f"{path}: is a folder, not a raster; give a raster file")
    try:
        return rasterio.open(path)
    except RasterioIOError:
        raise RasterReadError(
            f"{path}: not a raster GDAL can read (corrupt, truncated or another format)"
        ) from None


def check_raster(ds: rasterio.DatasetReader, *, bands: int) -> None:
    """Refuse rasters the pipeline cannot georeference or the model cannot read."""
    name = Path(ds.name).name
    if ds.crs is None or ds.transform == rasterio.Affine.identity():
        raise InputError(f"{name}: raster has no CRS or geotransform; georeference it first "
                         "(e.g. gdal_edit.py -a_srs / -a_ullr)")
    if ds.count != bands:
        raise InputError(f"{name}: raster has {ds.count} band(s) but the model expects {bands}; "
                         "choose a matching checkpoint or raster")
    if ds.dtypes[0] not in SUPPORTED_DTYPES:
        raise InputError(f"{name}: data type {ds.dtypes[0]} is not supported; convert to one of "
                         f"{', '.join(SUPPORTED_DTYPES)}")


def pixel_size_m(ds: rasterio.DatasetReader) -> float:
    """Mean pixel side in metres (projected CRSs), for settings given in metres."""
    if ds.crs is None or not ds.crs.is_projected:
        raise InputError(f"{Path(ds.name).name}: sizes in metres need a projected CRS; give "
                         "them in pixels or reproject the raster")
    _, factor = ds.crs.linear_units_factor
    return float((abs(ds.res[0]) + abs(ds.res[1])) / 2 * factor)


def read_window(ds: rasterio.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(bands, h, w)`` of a window and its validity mask ``(h, w)`` (True = valid)."""
    try:
        data = ds.read(window=window)
        valid = ds.dataset_mask(window=window) > 0
    except RasterioIOError as exc:
        raise RasterReadError(f"{Path(ds.name).name}: failed to read {window} ({exc}); the "
                              "file may be truncated or corrupt") from None
    return data, valid


@contextmanager
def staged_outputs(output_dir: Path) -> Iterator[Path]:
    """A staging folder inside ``output_dir``; removed on exit whether or not the run succeeded.

    Move finished files out with :func:`publish` before the block ends.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".deeplab-geo-", dir=output_dir))
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create output directory ({exc.strerror}); "
                          "choose a writable output_dir") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staged: dict[str, Path], output_dir: Path) -> dict[str, Path]:
    """Move staged files to their final names in ``output_dir`` (atomic per file)."""
    final = {}
    root = output_dir.resolve()
    for key, src in staged.items():
        dst = (output_dir / src.name).resolve()
        if dst.parent != root:
            raise OutputError(f"{src.name}: output name escapes the output directory")
        os.replace(src, dst)
        final[key] = dst
    return final

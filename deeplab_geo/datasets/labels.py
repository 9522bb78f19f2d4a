"""Ground truth for a raster's grid, read window by window: a class raster or vector polygons.

A *class raster* must lie on the grid (same size and geotransform); its nodata value and 255
mean "not labelled". *Vector labels* (GeoPackage, GeoJSON, Shapefile, FlatGeobuf) are polygons
with an integer class id in ``class_field``; they are reprojected once to the grid's CRS and
rasterized for each window requested (a pixel takes the class of the polygon containing its
centre; where polygons overlap, the later feature wins; pixels outside every polygon are 255).
Nothing grid-sized is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from deeplab_geo import io
from deeplab_geo.errors import InputError
from deeplab_geo.metrics import IGNORE_INDEX

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")


@dataclass(frozen=True)
class Grid:
    """The pixel grid labels are read on."""

    width: int
    height: int
    transform: rasterio.Affine
    crs: CRS | None

    @classmethod
    def of(cls, ds: rasterio.DatasetReader) -> Grid:
        return cls(ds.width, ds.height, ds.transform, ds.crs)


class LabelSource(Protocol):
    """Reads uint8 class ids ``(h, w)`` of a window of the grid (255 = not labelled)."""

    def read(self, window: Window) -> np.ndarray: ...


def is_vector(path: str | Path) -> bool:
    """Whether a labels path names a vector file (by its suffix)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def open_labels(path: str | Path, grid: Grid, *, class_field: str = "class_id",
                layer: str | None = None) -> LabelSource:
    """The label source for ``path`` on ``grid``: vector polygons or a class raster.

    Raises:
        InputError: the file is missing, off the grid, lacks ``class_field``, has no CRS, or
            holds class ids outside 0..254.
    """
    path = Path(path)
    if is_vector(path):
        return VectorLabels(path, grid, class_field=class_field, layer=layer)
    return RasterLabels(path, grid)


class RasterLabels:
    """A class raster on the grid; its nodata value is mapped to 255."""

    def __init__(self, path: Path, grid: Grid) -> None:
        with io.open_raster(path) as ds:
            if (ds.width, ds.height) != (grid.width, grid.height) or \
                    not ds.transform.almost_equals(grid.transform):
                raise InputError(f"{path.name}: labels are not on the raster's grid (size "
                                 f"{ds.width}x{ds.height}, transform differs); resample them to "
                                 "the raster's grid first")
            self.nodata = ds.nodata
            self.class_names = ds.tags().get("CLASS_NAMES", "").split(",") \
                if ds.tags().get("CLASS_NAMES") else None
            self.colours = _colours(ds, len(self.class_names)) if self.class_names else None
        self.path = path

    def read(self, window: Window) -> np.ndarray:
        with rasterio.open(self.path) as ds:
            data = io.read_window(ds, window)[0][0]
        if self.nodata is not None and self.nodata != IGNORE_INDEX:
            data = np.where(data == self.nodata, IGNORE_INDEX, data)
        if data.dtype != np.uint8:
            data = np.where((data >= 0) & (data <= IGNORE_INDEX), data, IGNORE_INDEX)
        return data.astype(np.uint8)


class VectorLabels:
    """Polygons with class ids, rasterized on the grid window by window."""

    def __init__(self, path: Path, grid: Grid, *, class_field: str = "class_id",
                 layer: str | None = None) -> None:
        import geopandas as gpd
        import shapely

        if not path.is_file():
            raise InputError(f"{path}: vector labels not found; check the labels path")
        try:
            frame = gpd.read_file(path, layer=layer, engine="pyogrio")
        except Exception as exc:  # noqa: BLE001 - any driver failure means unreadable labels
            raise InputError(f"{path.name}: not a vector file GDAL can read "
                             f"({type(exc).__name__}); give a GeoPackage or GeoJSON") from None
        if class_field not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != frame.geometry.name)
            raise InputError(f"{path.name}: no field '{class_field}' (fields: {fields}); "
                             "name the class id field with class_field / --class-field")
        values = frame[class_field].to_numpy()
        if not np.issubdtype(values.dtype, np.number) or np.isnan(values.astype(float)).any() \
                or (values != np.round(values)).any() or values.min(initial=0) < 0 \
                or values.max(initial=0) >= IGNORE_INDEX:
            raise InputError(f"{path.name}: field '{class_field}' must hold integer class ids "
                             "0..254 in every feature")
        if grid.crs is None:
            raise InputError(f"{path.name}: the raster has no CRS to place vector labels on; "
                             "georeference it first or give a label raster")
        if len(frame) and frame.crs is None:
            raise InputError(f"{path.name}: vector labels have no CRS; assign one (e.g. "
                             "ogr2ogr -a_srs) so they can be placed on the raster")
        if frame.crs is not None:
            target = ProjCRS.from_wkt(grid.crs.to_wkt())
            if not ProjCRS.from_user_input(frame.crs).equals(target):
                frame = frame.to_crs(target)
        self.geometries = frame.geometry.to_numpy()
        self.values = values.astype(np.uint8)
        self.tree = shapely.STRtree(self.geometries)
        self.grid = grid
        self.class_names = None
        self.colours = None

    def read(self, window: Window) -> np.ndarray:
        from rasterio import features
        from shapely.geometry import box

        height, width = int(window.height), int(window.width)
        transform = window_transform(window, self.grid.transform)
        left, top = transform * (0, 0)
        right, bottom = transform * (width, height)
        hits = np.sort(self.tree.query(box(min(left, right), min(top, bottom),
                                           max(left, right), max(top, bottom))))
        if len(hits) == 0:
            return np.full((height, width), IGNORE_INDEX, np.uint8)
        shapes = zip(self.geometries[hits], self.values[hits].tolist())
        return features.rasterize(shapes, out_shape=(height, width), transform=transform,
                                  fill=IGNORE_INDEX, dtype="uint8")


def _colours(ds: rasterio.DatasetReader, count: int) -> list[list[int]] | None:
    try:
        table = ds.colormap(1)
    except ValueError:
        return None
    return [list(table.get(i, (0, 0, 0, 255))[:3]) for i in range(count)]

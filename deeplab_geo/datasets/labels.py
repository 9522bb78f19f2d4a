"""Ground truth for a raster's grid, read window by window: a class raster or vector polygons.

A *class raster* must lie on the grid (same size and geotransform); its nodata value and 255
mean "not labelled". A class raster labelled in another CRS is used as it is when the two CRSs
place the grid's pixels within a tenth of a pixel of each other (two datum realisations of one
state plane, say); otherwise it is warped onto the grid (nearest neighbour).
*Vector labels* (GeoPackage, GeoJSON, Shapefile, FlatGeobuf) are polygons
with a class in ``class_field``; they are reprojected once to the grid's CRS and
rasterized for each window requested (a pixel takes the class of the polygon containing its
centre; where polygons overlap, the later feature wins; pixels outside every polygon are 255).
Nothing grid-sized is held in memory.

Which label means which class: by default a label *is* the class id (0-based). ``values``
lists the label value of each class instead (``[1, 2, ..., 7]`` for a raster coded from 1);
other values are not labelled. A vector field of class *names* (text) is matched against
``classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from deeplab_geo.errors import InputError
from deeplab_geo.raster import io
from deeplab_geo.raster.io import Grid  # the grid labels are read on
from deeplab_geo.tools.metrics import IGNORE_INDEX

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")


class LabelSource(Protocol):
    """Reads uint8 class ids ``(h, w)`` of a window of the grid (255 = not labelled)."""

    def read(self, window: Window) -> np.ndarray: ...


def is_vector(path: str | Path) -> bool:
    """Whether a labels path names a vector file (by its suffix)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def open_labels(path: str | Path, grid: Grid, *, class_field: str = "class_id",
                layer: str | None = None, values: list[int] | None = None,
                classes: list[str] | None = None) -> LabelSource:
    """The label source for ``path`` on ``grid``: vector polygons or a class raster.

    Args:
        values: the label value of each class, in class order (default: label = class id).
        classes: class names, to match a vector field that holds names.

    Raises:
        InputError: the file is missing, off the grid, lacks ``class_field``, has no CRS, or
            holds class ids outside 0..254 or names not in ``classes``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: labels not found; check the labels path (--labels, "
                         "data.labels)")
    if is_vector(path):
        return VectorLabels(path, grid, class_field=class_field, layer=layer, values=values,
                            classes=classes)
    return RasterLabels(path, grid, values=values)


def value_table(values: list[int] | None) -> np.ndarray | None:
    """A lookup table from label values 0..255 to class ids (255 where no class has that
    value), or ``None`` when labels are class ids already."""
    if values is None:
        return None
    if len(set(values)) != len(values) or not all(0 <= v < IGNORE_INDEX for v in values):
        raise InputError(f"class values {values} must be distinct integers 0..254; fix "
                         "data.class_values / --label-values")
    table = np.full(256, IGNORE_INDEX, np.uint8)
    table[values] = np.arange(len(values), dtype=np.uint8)
    return table


def grid_shift_px(grid: Grid, crs: CRS) -> float:
    """How far (in pixels) the grid's corners and centre move when their coordinates in the
    grid's CRS are read as coordinates in ``crs``: 0 for one CRS, a fraction of a pixel for
    two realisations of one projection."""
    from pyproj import Transformer

    transformer = Transformer.from_crs(_proj(grid.crs), _proj(crs), always_xy=True)
    cols = np.array([0, grid.width, 0, grid.width, grid.width / 2])
    rows = np.array([0, 0, grid.height, grid.height, grid.height / 2])
    xs, ys = grid.transform * (cols, rows)
    tx, ty = transformer.transform(xs, ys)
    pixel = (abs(grid.transform.a) + abs(grid.transform.e)) / 2
    return float(np.nanmax(np.hypot(tx - xs, ty - ys)) / pixel)


def _proj(crs: CRS) -> ProjCRS:
    """A pyproj CRS, by its EPSG code where it has one (so that PROJ picks the datum
    transformation registered for the pair, not a ballpark one)."""
    return ProjCRS.from_user_input(crs.to_string())


def same_crs(a: CRS, b: CRS) -> bool:
    """Strict CRS equality (rasterio's ``==`` calls two datum realisations of one projection,
    such as NAD83 and NAD83(HARN), equal)."""
    return _proj(a).equals(_proj(b))


#: Labels whose CRS moves the grid by less than this (pixels) are read without warping.
SAME_GRID_SHIFT_PX = 0.1


class RasterLabels:
    """A class raster on the grid; its nodata value is mapped to 255.

    Attributes:
        note: how the labels were placed on the grid when their CRS differs ("" otherwise).
    """

    def __init__(self, path: Path, grid: Grid, *, values: list[int] | None = None) -> None:
        self.path, self.grid, self.warp, self.note = path, grid, False, ""
        self.table = value_table(values)
        with io.open_raster(path) as ds:
            other_crs = ds.crs is not None and grid.crs is not None and \
                not same_crs(ds.crs, grid.crs)
            if other_crs:
                shift = grid_shift_px(grid, ds.crs)
                self.warp = shift >= SAME_GRID_SHIFT_PX or (ds.width, ds.height) != \
                    (grid.width, grid.height) or not ds.transform.almost_equals(grid.transform)
                self.note = (f"labels in {ds.crs} warped onto the raster's grid in {grid.crs} "
                             "(nearest neighbour)" if self.warp else
                             f"labels in {ds.crs}, read on the raster's grid in {grid.crs} "
                             f"as they are (the CRSs differ by {shift:.2f} px)")
            elif (ds.width, ds.height) != (grid.width, grid.height) or \
                    not ds.transform.almost_equals(grid.transform):
                raise InputError(f"{path.name}: labels are not on the raster's grid (size "
                                 f"{ds.width}x{ds.height}, transform differs); resample them to "
                                 "the raster's grid first")
            self.nodata = ds.nodata
            self.class_names = ds.tags().get("CLASS_NAMES", "").split(",") \
                if ds.tags().get("CLASS_NAMES") else None
            self.colours = _colours(ds, len(self.class_names)) if self.class_names else None

    def read(self, window: Window) -> np.ndarray:
        with rasterio.open(self.path) as ds:
            if self.warp:
                from rasterio.enums import Resampling
                from rasterio.vrt import WarpedVRT

                with WarpedVRT(ds, crs=self.grid.crs, transform=self.grid.transform,
                               width=self.grid.width, height=self.grid.height,
                               resampling=Resampling.nearest,
                               nodata=self.nodata if self.nodata is not None else
                               IGNORE_INDEX) as vrt:
                    data = vrt.read(1, window=window)
            else:
                data = io.read_window(ds, window)[0][0]
        if self.nodata is not None and self.nodata != IGNORE_INDEX:
            data = np.where(data == self.nodata, IGNORE_INDEX, data)
        if data.dtype != np.uint8:
            data = np.where((data >= 0) & (data <= IGNORE_INDEX), data, IGNORE_INDEX)
        data = data.astype(np.uint8)
        return data if self.table is None else self.table[data]


class VectorLabels:
    """Polygons with class ids, rasterized on the grid window by window."""

    def __init__(self, path: Path, grid: Grid, *, class_field: str = "class_id",
                 layer: str | None = None, values: list[int] | None = None,
                 classes: list[str] | None = None) -> None:
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
        ids = _class_ids(frame[class_field].to_numpy(), path.name, class_field, values,
                         classes)
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
        keep = ids != IGNORE_INDEX
        self.geometries = frame.geometry.to_numpy()[keep]
        self.values = ids[keep]
        self.tree = shapely.STRtree(self.geometries)
        self.grid = grid
        self.class_names = None
        self.colours = None
        self.note = ""

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


def _class_ids(field: np.ndarray, name: str, class_field: str, values: list[int] | None,
               classes: list[str] | None) -> np.ndarray:
    """The class id (uint8, 255 = no class) of each feature from its ``class_field``."""
    if not np.issubdtype(field.dtype, np.number):
        names = [str(v) for v in field]
        if classes is None:
            raise InputError(f"{name}: field '{class_field}' holds names ({names[0]!r}, ...), "
                             "not class ids; list the class names (data.classes) to match them")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise InputError(f"{name}: field '{class_field}' holds {', '.join(unknown)}, not "
                             f"among the classes ({', '.join(classes)}); fix the names or "
                             "data.classes")
        return np.array([classes.index(n) for n in names], np.uint8)
    if np.isnan(field.astype(float)).any() or (field != np.round(field)).any() \
            or field.min(initial=0) < 0 or field.max(initial=0) >= IGNORE_INDEX:
        raise InputError(f"{name}: field '{class_field}' must hold integer class ids "
                         "0..254 in every feature")
    ids = field.astype(np.uint8)
    table = value_table(values)
    return ids if table is None else table[ids]


def _colours(ds: rasterio.DatasetReader, count: int) -> list[list[int]] | None:
    try:
        table = ds.colormap(1)
    except ValueError:
        return None
    return [list(table.get(i, (0, 0, 0, 255))[:3]) for i in range(count)]

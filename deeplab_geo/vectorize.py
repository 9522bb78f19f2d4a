"""Vectorization: one polygon per connected region of a class raster, in the raster's CRS.

Regions are connected components of equal class under 8-connectivity (diagonal neighbours join;
``connectivity=4`` to require shared edges); holes are kept. Each polygon carries
``class_id``, ``class_name``, ``area_m2`` and ``mean_confidence`` (mean of the confidence raster
over the region). ``simplify`` is a topology-preserving tolerance in map units applied to each
polygon; regions smaller than ``min_area`` m² are dropped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from pyproj import CRS, Geod
from scipy import ndimage

from deeplab_geo.config import VectorizeSettings
from deeplab_geo.stitch import CLASS_NODATA

LAYER = "landcover"


def label_regions(classes: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Number connected regions of equal class.

    Returns:
        ``regions`` int32 array (0 = nodata, 1..n = region id) and ``region_class`` (n + 1,)
        mapping each region id to its class (entry 0 unused).
    """
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    regions = np.zeros(classes.shape, dtype=np.int32)
    region_class = [CLASS_NODATA]
    for cls in np.unique(classes):
        if cls == CLASS_NODATA:
            continue
        labelled, count = ndimage.label(classes == cls, structure=structure)
        mask = labelled > 0
        regions[mask] = labelled[mask] + len(region_class) - 1
        region_class.extend([int(cls)] * count)
    return regions, np.asarray(region_class, dtype=np.int32)


def area_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    """Areas in square metres: planar in projected CRSs, geodesic in geographic ones."""
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms])
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return shapely.area(geoms) * factor**2


def polygonize(classes_path: Path, confidence_path: Path | None, class_names: list[str],
               settings: VectorizeSettings) -> gpd.GeoDataFrame:
    """Polygons of a class raster with their attributes (see module docstring).

    Without a confidence raster (ground truth, say) the ``mean_confidence`` field is omitted.
    """
    with rasterio.open(classes_path) as src:
        classes = src.read(1)
        transform, crs = src.transform, CRS.from_wkt(src.crs.to_wkt())
    regions, region_class = label_regions(classes, settings.connectivity)
    parts: dict[int, list] = defaultdict(list)
    for geom, value in rasterio.features.shapes(regions, mask=regions > 0,
                                                connectivity=settings.connectivity,
                                                transform=transform):
        parts[int(value)].append(shapely.geometry.shape(geom))
    ids = np.array(sorted(parts), dtype=np.int64)
    geoms = np.array([_merge(parts[i]) for i in ids], dtype=object)
    if settings.simplify > 0 and len(geoms):
        geoms = shapely.simplify(geoms, settings.simplify, preserve_topology=True)
    cls = region_class[ids] if len(ids) else np.array([], dtype=np.int32)
    fields = {
        "class_id": cls.astype(np.int32),
        "class_name": [class_names[c] for c in cls],
        "area_m2": area_m2(geoms, crs) if len(geoms) else np.array([], dtype=float),
    }
    if confidence_path is not None:
        fields["mean_confidence"] = _region_means(regions, confidence_path, len(region_class))[ids]
    frame = gpd.GeoDataFrame(fields, geometry=list(geoms), crs=crs)
    if settings.min_area > 0:
        frame = frame[frame["area_m2"] >= settings.min_area].reset_index(drop=True)
    return frame


def _region_means(regions: np.ndarray, raster: Path, n_regions: int) -> np.ndarray:
    with rasterio.open(raster) as src:
        values = src.read(1).astype(np.float64)
    counts = np.bincount(regions.ravel(), minlength=n_regions)
    sums = np.bincount(regions.ravel(), weights=values.ravel(), minlength=n_regions)
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def write_polygons(frame: gpd.GeoDataFrame, path: Path, layer: str = LAYER) -> None:
    """Write polygons (GeoPackage with a spatial index, or by extension) via pyogrio."""
    frame.to_file(path, layer=layer, engine="pyogrio", SPATIAL_INDEX="YES")


def _merge(polygons: list) -> shapely.MultiPolygon:
    geom = polygons[0] if len(polygons) == 1 else shapely.union_all(polygons)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        geom = shapely.union_all([g for g in shapely.get_parts(geom)
                                  if g.geom_type == "Polygon"])
    return geom if geom.geom_type == "MultiPolygon" else shapely.MultiPolygon([geom])

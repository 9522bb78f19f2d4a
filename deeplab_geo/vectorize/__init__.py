"""Vectorization: one polygon per connected region of a class raster, in the raster's CRS.

A region is a connected set of pixels of one class (8-connectivity by default: pixels touching
at a corner belong together; ``connectivity: 4`` for shared edges only). Each region becomes
exactly one feature, with its holes, however large the raster: the raster is streamed in strips
and regions that cross strip boundaries are joined before they are written
(:mod:`deeplab_geo.vectorize.regions`). Memory holds a few strips (``workers`` threads label
and trace strips ahead) and the regions crossing the current strip's lower edge, never the whole
raster.

Attributes of each feature:

* ``class_id``, ``class_name``;
* ``area_m2`` and ``perimeter_m`` of the written geometry (planar in projected CRSs, scaled by the
  axis unit; geodesic in geographic CRSs). Without simplification a polygon's area is exactly its
  pixel count times the pixel area;
* ``mean_confidence``: mean of the confidence raster over the region's pixels (only when a
  confidence raster is given);
* ``pixel_count``; ``source``: the name of the raster that was segmented.

Options (:class:`~deeplab_geo.config.VectorizeSettings`):

* ``min_area`` (m²) with ``min_area_mode``: ``merge`` reassigns small regions on the raster to the
  class of the neighbour they share the longest edge with
  (:mod:`deeplab_geo.vectorize.small_regions`), ``drop`` leaves them out; either way no output
  polygon is smaller than ``min_area``;
* ``simplify``: tolerance in map units for GEOS's coverage simplifier, which simplifies each edge
  shared by two polygons once, so neighbours keep their common boundary (no gaps or overlaps).
  It needs the whole coverage, so with ``simplify`` the polygons (not the raster) are held in
  memory until they are written;
* ``skip_classes``: class names or ids that are not vectorized;
* ``layout``: ``single`` layer or ``per_class`` layers (GeoPackage);
* ``format``: ``gpkg``, ``fgb``, ``geojson`` or ``parquet`` (:mod:`deeplab_geo.vectorize.writers`).
"""

# The names below load on first use (PEP 562): helper processes that label and trace strips
# import deeplab_geo.vectorize.regions, and so this package, without GeoPandas and Arrow.
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LAYER", "SUFFIXES", "VectorizeResult", "label_regions", "polygonize", "vectorize",
           "vectorize_strips", "write_polygons"]

_HOMES = {"label_regions": "deeplab_geo.vectorize.labels"}

SUFFIXES = {"gpkg": ".gpkg", "fgb": ".fgb", "geojson": ".geojson", "parquet": ".parquet"}
"""The file suffix of each ``vectorize.format`` (here, so that naming outputs loads nothing)."""


def __getattr__(name: str) -> Any:
    if name not in __all__ or name == "SUFFIXES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "deeplab_geo.vectorize.polygons")),
                    name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

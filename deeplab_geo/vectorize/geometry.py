"""Pure geometry helpers of the vectorizer: no files, no rasters, arrays in and arrays out.

Polygons are traced in map coordinates. Where exact arithmetic matters (joining pieces of a region
across strips, adding pixel-corner vertices for coverage operations) they are moved back to
*pixel coordinates*: ``x`` the column and ``y`` the row of a pixel corner (``(0, 0)`` is the
raster's upper-left corner, ``y`` grows downwards). These are integers, so unions there are exact
whatever the pixel size or rotation.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, islice
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Geod


def polygons_from_shapes(shapes: Iterable[tuple[dict[str, Any], float]], *,
                         chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Shapely polygons from the GeoJSON-like output of ``rasterio.features.shapes``.

    Builds rings and polygons with one vectorized call per ``chunk`` features instead of one
    ``shape()`` per feature (the slow part of converting GDAL's polygons on noisy rasters), and
    never holds more than ``chunk`` features as Python objects.

    Returns:
        ``(polygons, values)``: an object array of polygons and the float array of their pixel
        values, in the order GDAL emitted them.
    """
    polygons, values = [np.empty(0, dtype=object)], [np.empty(0)]
    shapes = iter(shapes)
    while batch := list(islice(shapes, chunk)):
        polygons.append(_polygons(batch))
        values.append(np.fromiter((value for _, value in batch), dtype=np.float64,
                                  count=len(batch)))
    return np.concatenate(polygons), np.concatenate(values)


def _polygons(features: list[tuple[dict[str, Any], float]]) -> np.ndarray:
    rings: list[list[tuple[float, float]]] = []
    rings_per_polygon = np.empty(len(features), dtype=np.int64)
    for i, (geom, _) in enumerate(features):
        coordinates = geom["coordinates"]
        rings.extend(coordinates)
        rings_per_polygon[i] = len(coordinates)
    ring_sizes = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    xy = np.fromiter(chain.from_iterable(chain.from_iterable(rings)), dtype=np.float64,
                     count=2 * int(ring_sizes.sum())).reshape(-1, 2)
    ring_geoms = shapely.linearrings(xy, indices=np.repeat(np.arange(len(rings)), ring_sizes))
    return shapely.polygons(ring_geoms, indices=np.repeat(np.arange(len(features)),
                                                         rings_per_polygon))


def pixel_squares(rows: np.ndarray, cols: np.ndarray, transform: Affine) -> np.ndarray:
    """Polygons of single pixels (given by row and column) in the coordinates of ``transform``."""
    a, b, _, d, e, _ = transform[:6]
    if b == 0 and d == 0:
        x0, y0 = _affine(transform, cols.astype(np.float64), rows.astype(np.float64))
        x1, y1 = x0 + a, y0 + e
        return shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1),
                           np.maximum(y0, y1))
    corner_cols = cols[:, None] + np.array([0, 1, 1, 0, 0])
    corner_rows = rows[:, None] + np.array([0, 0, 1, 1, 0])
    xy = np.stack(_affine(transform, corner_cols.astype(np.float64),
                          corner_rows.astype(np.float64)), axis=-1)
    return shapely.polygons(xy)


def valid_parts(polygons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid polygons covering the same area as ``polygons``, with the index of their source.

    An invalid polygon is repaired with ``make_valid``, which splits a ring that passes twice
    through a corner at that corner (a hole touching its shell, parts touching at a point) and
    moves no vertex, so the area is unchanged; lines or points it may add are dropped.
    """
    polygons = np.asarray(polygons, dtype=object)
    invalid = ~shapely.is_valid(polygons)
    if invalid.any():
        polygons = polygons.copy()
        polygons[invalid] = shapely.make_valid(polygons[invalid])
    parts, index = shapely.get_parts(polygons, return_index=True)
    polygonal = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    return parts[polygonal], index[polygonal]


def as_multipolygons(geoms: np.ndarray) -> np.ndarray:
    """Polygons and MultiPolygons as MultiPolygons (one output layer type)."""
    parts, index = shapely.get_parts(np.asarray(geoms, dtype=object), return_index=True)
    return shapely.multipolygons(parts, indices=index)


def _affine(transform: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e, f = transform[:6]
    if b == 0 and d == 0:
        return x * a + c, y * e + f
    return x * a + y * b + c, x * d + y * e + f


def to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Geometries moved from pixel coordinates to map coordinates with ``transform``."""
    return shapely.transform(geoms, lambda xy: np.stack(
        _affine(transform, xy[:, 0], xy[:, 1]), axis=1))


def to_pixel(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Map-coordinate geometries traced from a raster back to exact pixel-corner coordinates.

    Every vertex of a traced polygon is a pixel corner, so rounding the inverse transform
    recovers its integer column and row exactly.
    """
    return shapely.transform(geoms, lambda xy: np.rint(np.stack(
        _affine(~transform, xy[:, 0], xy[:, 1]), axis=1)))


def join_pieces(pieces: np.ndarray) -> shapely.Geometry:
    """Union of the pieces of one region (pixel coordinates; interiors disjoint, edges shared).

    A general overlay of large pieces costs most in their holes, which noisy rasters have by the
    thousand. Holes take no part in joining pieces that meet from outside, so:

    * pieces lying in another piece's hole (8-connected through a corner) are kept as they are:
      they touch nothing but corners and cannot reach a strip edge, as holes do not;
    * the shells of the other pieces are unioned alone, and every hole is put back into the part
      that contains it.

    The exact (integer) areas check the shortcut: the union of the shells must have the summed
    area of the shells. If it has not, the pieces are unioned as they are.
    """
    parts = shapely.get_parts(pieces)
    rings, ring_owner = shapely.get_rings(parts, return_index=True)
    is_shell = np.ones(len(rings), bool)
    is_shell[1:] = ring_owner[1:] != ring_owner[:-1]  # each polygon lists its shell first
    shells = shapely.polygons(rings[is_shell])
    # Interiors are disjoint, so a piece lies in another's hole exactly when a point of its
    # interior lies within the other's shell: a point test, not a polygon-in-polygon one.
    outer, inner = shapely.STRtree(shapely.point_on_surface(shells)).query(
        shells, predicate="contains")
    nested = np.zeros(len(parts), bool)
    nested[inner[inner != outer]] = True
    kept = shells[~nested]
    joined = shapely.union_all(kept)
    if shapely.area(joined) != shapely.area(kept).sum():
        return shapely.union_all(parts)
    holes = rings[~is_shell & ~nested[ring_owner]]
    targets = shapely.get_parts(joined)
    if len(holes):
        inside = shapely.point_on_surface(shapely.polygons(holes))
        target_index, hole_index = shapely.STRtree(inside).query(targets, predicate="contains")
        if len(hole_index) != len(holes) or len(np.unique(hole_index)) != len(holes):
            return shapely.union_all(parts)
        target_rings, target_owner = shapely.get_rings(targets, return_index=True)
        owner = np.empty(len(holes), np.int64)
        owner[hole_index] = target_index
        all_rings = np.concatenate([target_rings, holes])
        all_owner = np.concatenate([target_owner, owner])
        order = np.argsort(all_owner, kind="stable")  # each target's shell stays first
        targets = shapely.polygons(all_rings[order], indices=all_owner[order])
    return shapely.multipolygons(np.concatenate([targets, parts[nested]]))


def densify_pixel_edges(geoms: np.ndarray) -> np.ndarray:
    """Pixel-coordinate polygons with a vertex at every pixel corner along their boundaries.

    Neighbouring polygons then carry the same vertices along every shared edge, which GEOS's
    coverage operations require (a polygon traced by GDAL has no vertex where its straight edge
    meets the corner between two of its neighbours).
    """
    return shapely.segmentize(geoms, 1.0)


def simplify_coverage(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify a polygon coverage edge by edge, so that neighbours keep their shared edges.

    ``geoms`` must be a valid coverage (no overlaps, matching vertices along shared edges; see
    :func:`densify_pixel_edges`). GEOS's coverage simplifier simplifies each edge between two
    polygons once, so no gap or overlap appears, and keeps rings from collapsing.

    Args:
        geoms: MultiPolygons in map coordinates.
        tolerance: Visvalingam-Whyatt tolerance in map units (the square root of the largest
            triangle area removed), as GEOS defines it.
    """
    if not len(geoms) or tolerance <= 0:
        return geoms
    return as_multipolygons(shapely.coverage_simplify(geoms, tolerance))


def linear_unit_factor(crs: CRS) -> float:
    """Metres per unit of a projected CRS's first axis."""
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


def area_perimeter_m(geoms: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m²) and perimeters (m) of map-coordinate geometries.

    Planar in projected CRSs (scaled by the axis unit, so feet work); geodesic on the CRS's
    ellipsoid in geographic ones. Perimeters count every ring, holes included.
    """
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        pairs = np.array([geod.geometry_area_perimeter(g) for g in geoms]).reshape(-1, 2)
        return np.abs(pairs[:, 0]), pairs[:, 1]
    factor = linear_unit_factor(crs)
    return shapely.area(geoms) * factor**2, shapely.length(geoms) * factor


def row_pixel_areas(transform: Affine, crs: CRS, row0: int, rows: int, width: int) -> np.ndarray:
    """Ground area (m²) of one pixel in each of ``rows`` rows starting at ``row0``.

    Constant in projected CRSs. In geographic CRSs a pixel's area shrinks towards the poles:
    each row's value is the geodesic area of its middle pixel (exact for north-up rasters,
    whose pixels in a row are all alike).
    """
    if not crs.is_geographic:
        return np.full(rows, abs(transform.determinant) * linear_unit_factor(crs) ** 2)
    geod = crs.get_geod() or Geod(ellps="WGS84")
    col = width // 2
    areas = np.empty(rows)
    for i in range(rows):
        r = row0 + i
        corners = [transform * (col + dx, r + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
        lons, lats = zip(*corners)
        areas[i] = abs(geod.polygon_area_perimeter(lons, lats)[0])
    return areas

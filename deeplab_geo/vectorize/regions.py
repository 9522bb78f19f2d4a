"""Exact connected regions of a class raster, streamed strip by strip.

A *region* is a connected set of pixels of one class: with ``connectivity=8`` pixels that touch
at a corner belong together, with ``connectivity=4`` only pixels that share an edge. Nodata
pixels (and classes that are skipped) belong to no region.

How it works, for a raster of any size:

1. The raster is read in strips of whole rows, a multiple of the file's block height
   (:func:`deeplab_geo.raster.tiling.strip_bounds`), so each block is decoded once.
2. Each strip is labelled, all classes at once, through runs of pixels
   (:mod:`deeplab_geo.vectorize.labels`); per region the pixel count, ground area and summed
   confidence come from sums over runs. GDAL traces the labels (``rasterio.features.shapes``,
   4-connected, so every ring is valid; the pieces of an 8-connected region touch only at
   corners and form its MultiPolygon as they are); single-pixel regions, the bulk of a noisy
   raster, become squares without GDAL.
3. Regions that do not reach the strip's last row are finished unless they continue a region of
   the previous strip; they are emitted at once.
4. Across each strip boundary, the last row of the previous strip is compared with the first row
   of the new one: pixels of the same class that touch (straight down, and with 8-connectivity
   also diagonally) belong to one region. The groups of pieces that meet are found with a
   connected-components pass over that small graph; a group stays open while one of its pieces
   reaches the new strip's last row, and is emitted, its pieces unioned, as soon as it does not.

On large rasters, steps 1-2 run in helper processes, a few strips ahead of steps 3-4, which
take the strips in order. Memory therefore holds a few strips' regions and the regions that
cross the current strip's lower edge, never the raster.
Polygons are in map coordinates; pieces are joined in pixel coordinates (see
:mod:`deeplab_geo.vectorize.geometry`), where vertices are integers and the union is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from deeplab_geo.errors import InputError
from deeplab_geo.processes import may_start_processes, worker_pool
from deeplab_geo.raster.stitch import Strip
from deeplab_geo.raster.tiling import strip_bounds
from deeplab_geo.vectorize.geometry import (
    as_multipolygons,
    join_pieces,
    pixel_squares,
    polygons_from_shapes,
    to_map,
    to_pixel,
    valid_parts,
)
from deeplab_geo.vectorize.labels import Regions, label_regions

# GDAL >= 3.7 traces 4-connected regions into valid polygons (its two-arm-chains polygonizer;
# invalid rings come only from 8-connected tracing, OSGeo/gdal#7369). Older GDALs are checked
# and repaired, which costs a GEOS validity test per polygon.
_GDAL_TRACES_VALID = tuple(int(v) for v in rasterio.__gdal_version__.split(".")[:2]) >= (3, 7)


@dataclass(frozen=True)
class RegionBatch:
    """Finished regions, one entry per region.

    Attributes:
        geometry: valid MultiPolygons in map coordinates.
        class_id: class of each region.
        pixel_count: pixels in each region.
        pixel_area_m2: summed ground area of the region's pixels (m²).
        confidence_sum: summed confidence over the region's pixels, or ``None`` without a
            confidence raster.
    """

    geometry: np.ndarray
    class_id: np.ndarray
    pixel_count: np.ndarray
    pixel_area_m2: np.ndarray
    confidence_sum: np.ndarray | None

    def __len__(self) -> int:
        return len(self.geometry)

    def select(self, keep: np.ndarray) -> RegionBatch:
        """The regions where ``keep`` (a boolean mask or index array) selects them."""
        return RegionBatch(self.geometry[keep], self.class_id[keep], self.pixel_count[keep],
                           self.pixel_area_m2[keep],
                           None if self.confidence_sum is None else self.confidence_sum[keep])


@dataclass
class _Group:
    """A region that crosses a strip boundary, collected until it is finished."""

    class_id: int
    pixel_count: int
    pixel_area_m2: float
    confidence_sum: float
    parts: list = field(default_factory=list)

    def absorb(self, other: _Group) -> None:
        self.pixel_count += other.pixel_count
        self.pixel_area_m2 += other.pixel_area_m2
        self.confidence_sum += other.confidence_sum
        self.parts.extend(other.parts)


@dataclass(frozen=True)
class _Strip:
    """One strip's regions and their statistics (index = local label), and the labels and
    classes of its first and last rows (what joining across strip boundaries needs)."""

    first_labels: np.ndarray
    last_labels: np.ndarray
    first_classes: np.ndarray
    last_classes: np.ndarray
    label_class: np.ndarray
    geometry: np.ndarray
    pixel_count: np.ndarray
    pixel_area_m2: np.ndarray
    confidence_sum: np.ndarray

    def group(self, label: int) -> _Group:
        return _Group(int(self.label_class[label]), int(self.pixel_count[label]),
                      float(self.pixel_area_m2[label]), float(self.confidence_sum[label]),
                      [self.geometry[label]])

    def batch(self, labels: np.ndarray, with_confidence: bool) -> RegionBatch:
        return RegionBatch(self.geometry[labels], self.label_class[labels],
                           self.pixel_count[labels], self.pixel_area_m2[labels],
                           self.confidence_sum[labels] if with_confidence else None)


def iter_regions(classes: rasterio.DatasetReader, *, connectivity: int = 8,
                 skip: tuple[int, ...] = (), confidence: rasterio.DatasetReader | None = None,
                 pixel_areas: np.ndarray | None = None, strip_rows: int | None = None,
                 workers: int = 2) -> Iterator[RegionBatch]:
    """Stream the finished regions of a class raster (band 1).

    Every region of the raster is yielded exactly once, whole, however the strips cut it.

    Args:
        classes: the class raster; its nodata pixels belong to no region.
        connectivity: 8 or 4 (see the module docstring).
        skip: class ids that are not vectorized (treated like nodata).
        confidence: a raster of the same grid whose band 1 (with its scale and offset) is
            summed per region.
        pixel_areas: ground area (m²) of a pixel in each row (default: 1 per pixel).
        strip_rows: rows per strip (default: see :func:`deeplab_geo.raster.tiling.strip_bounds`).
        workers: processes that label and trace strips: 1 is this process alone (the least
            memory); from 2, that many helper processes while this one joins (rasters from
            :data:`HELPER_MIN_PIXELS`).

    Raises:
        InputError: the class raster is not of an integer type.
    """
    if not np.issubdtype(np.dtype(classes.dtypes[0]), np.integer):
        raise InputError(f"{classes.name}: class raster has data type {classes.dtypes[0]}; "
                         "vectorizing needs integer class ids")
    height, width = classes.height, classes.width
    if pixel_areas is None:
        pixel_areas = np.ones(height)
    bounds = strip_bounds(height, width, classes.block_shapes[0][0], strip_rows)
    strips = _strips(classes, confidence, bounds, connectivity, skip, pixel_areas, workers)
    yield from _join(zip((row1 for _, row1 in bounds), strips), height, connectivity,
                     confidence is not None, classes.transform)


def iter_strip_regions(strips: Iterable[Strip], *, height: int, width: int,
                       transform: Affine, nodata: int, connectivity: int = 8,
                       skip: tuple[int, ...] = (), with_confidence: bool = False,
                       confidence_scale: float = 1.0, pixel_areas: np.ndarray | None = None
                       ) -> Iterator[RegionBatch]:
    """:func:`iter_regions` over strips handed over in memory, top to bottom (the pipeline's
    polygon stage: strips come from prediction as they are finished, nothing is read back).

    ``nodata`` marks pixels of no region; confidence values are multiplied by
    ``confidence_scale`` before they are summed.
    """
    if pixel_areas is None:
        pixel_areas = np.ones(height)

    def labelled() -> Iterator[tuple[int, _Strip]]:
        for strip in strips:
            rows = slice(strip.row0, strip.row1)
            if strip.classes is None:
                yield strip.row1, _empty_strip(width)
                continue
            valid = strip.classes != nodata
            yield strip.row1, _strip_from_pixels(
                strip.classes, valid, strip.confidence, confidence_scale, 0.0, connectivity,
                skip, pixel_areas[rows], transform * Affine.translation(0, strip.row0))

    yield from _join(labelled(), height, connectivity, with_confidence, transform)


def _join(strips: Iterable[tuple[int, _Strip]], height: int, connectivity: int,
          with_confidence: bool, transform: Affine) -> Iterator[RegionBatch]:
    """Finished regions of labelled strips given top to bottom with their last row + 1 (see
    steps 3 and 4 of the module docstring)."""
    open_groups: dict[int, _Group] = {}
    prev_keys = prev_classes = None
    next_key = 1
    for row1, strip in strips:
        last = row1 == height
        n = len(strip.label_class) - 1
        reaches_bottom = np.zeros(n + 1, bool)
        if not last:
            reaches_bottom[strip.last_labels] = True
            reaches_bottom[0] = False
        keys, labels = (_boundary_pairs(prev_keys, prev_classes, strip.first_labels,
                                        strip.first_classes, connectivity)
                        if open_groups else (np.empty(0, np.int64), np.empty(0, np.int64)))
        continued = np.zeros(n + 1, bool)
        continued[labels] = True

        alone = np.flatnonzero(~continued & ~reaches_bottom)
        alone = alone[alone > 0]
        if len(alone):
            yield strip.batch(alone, with_confidence)

        finished: list[_Group] = []
        still_open: dict[int, _Group] = {}
        bottom_key = np.zeros(n + 1, np.int64)
        for group_keys, group_labels in _components(keys, labels):
            group = open_groups.pop(int(group_keys[0]))
            for key in group_keys[1:]:
                group.absorb(open_groups.pop(int(key)))
            for label in group_labels:
                group.absorb(strip.group(int(label)))
            if reaches_bottom[group_labels].any():
                still_open[next_key] = group
                bottom_key[group_labels] = next_key
                next_key += 1
            else:
                finished.append(group)
        finished.extend(open_groups.values())
        for label in np.flatnonzero(reaches_bottom & ~continued):
            still_open[next_key] = strip.group(int(label))
            bottom_key[label] = next_key
            next_key += 1
        if finished:
            yield _finish(finished, with_confidence, transform)
        open_groups = still_open
        prev_keys = bottom_key[strip.last_labels]
        prev_classes = strip.last_classes


HELPER_MIN_PIXELS = 1 << 24
"""Rasters from this many pixels (16 Mpx) get helper processes; below, starting one costs more
than it saves."""

_LOOKAHEAD = 3  # strips given to the helpers beyond the one being joined, at most
_DENSE_LOOKAHEAD = 1  # the same once a strip had more than _DENSE_REGIONS regions (noise):
_DENSE_REGIONS = 100_000  # then each strip's polygons take hundreds of MB


def _strips(classes: rasterio.DatasetReader, confidence: rasterio.DatasetReader | None,
            bounds: list[tuple[int, int]], connectivity: int, skip: tuple[int, ...],
            pixel_areas: np.ndarray, workers: int) -> Iterator[_Strip]:
    """The labelled and traced strips, in order.

    GDAL's tracing holds the GIL, so threads cannot share it: with ``workers > 1`` and a large
    raster, ``workers`` helper processes (:mod:`deeplab_geo.processes`: started once, kept for
    the process's life, replaced if one dies) open the rasters themselves and label and trace
    strips while this process joins them. At most ``_LOOKAHEAD`` strips are computed beyond
    the one being joined, one once strips turn out to hold very many regions (a noisy raster),
    whose polygons take much memory.
    """
    if not _helpers_apply(classes, confidence, len(bounds), workers):
        for row0, row1 in bounds:
            yield _compute_strip(classes, confidence, row0, row1, connectivity, skip,
                                 pixel_areas[row0:row1])
        return
    paths = (classes.name, confidence.name if confidence is not None else None)
    tasks = [(*paths, row0, row1, connectivity, skip, pixel_areas[row0:row1])
             for row0, row1 in bounds]
    lookahead = [_LOOKAHEAD]
    helpers = worker_pool(workers, role="vectorize")
    for strip in helpers.imap(_helper_strip, tasks, ahead=lambda: lookahead[0]):
        if len(strip.label_class) > _DENSE_REGIONS:
            lookahead[0] = _DENSE_LOOKAHEAD
        yield dataclasses.replace(strip, geometry=shapely.from_wkb(strip.geometry))


def _helpers_apply(classes: rasterio.DatasetReader, confidence: rasterio.DatasetReader | None,
                   strips: int, workers: int) -> bool:
    """Helper processes pay off for large rasters in files they can open themselves (and a
    daemonic process, such as a dask worker, may not start any)."""
    files = [ds for ds in (classes, confidence) if ds is not None]
    return (workers > 1 and strips > 2 and classes.width * classes.height >= HELPER_MIN_PIXELS
            and all(Path(ds.name).is_file() for ds in files) and may_start_processes())


def _helper_strip(classes_path: str, confidence_path: str | None, row0: int, row1: int,
                  connectivity: int, skip: tuple[int, ...], pixel_areas: np.ndarray) -> _Strip:
    """In a helper process: one strip, its geometries as WKB (much faster to send)."""
    with ExitStack() as stack:
        classes = stack.enter_context(rasterio.open(classes_path))
        confidence = (stack.enter_context(rasterio.open(confidence_path))
                      if confidence_path is not None else None)
        strip = _compute_strip(classes, confidence, row0, row1, connectivity, skip, pixel_areas)
    return dataclasses.replace(strip, geometry=shapely.to_wkb(strip.geometry))


def _compute_strip(classes: rasterio.DatasetReader, confidence: rasterio.DatasetReader | None,
                   row0: int, row1: int, connectivity: int, skip: tuple[int, ...],
                   pixel_areas: np.ndarray) -> _Strip:
    if _no_data_stored(classes, row0, row1):
        return _empty_strip(classes.width)
    window = Window(0, row0, classes.width, row1 - row0)
    values = classes.read(1, window=window)
    valid = (values != classes.nodata) if classes.nodata is not None else \
        classes.read_masks(1, window=window) > 0
    scale, offset = (confidence.scales[0], confidence.offsets[0]) if confidence is not None \
        else (1.0, 0.0)
    confidence_values = confidence.read(1, window=window) if confidence is not None else None
    return _strip_from_pixels(values, valid, confidence_values, scale, offset, connectivity,
                              skip, pixel_areas, classes.transform * Affine.translation(0, row0))


def _strip_from_pixels(values: np.ndarray, valid: np.ndarray, confidence: np.ndarray | None,
                       scale: float, offset: float, connectivity: int, skip: tuple[int, ...],
                       pixel_areas: np.ndarray, transform: Affine) -> _Strip:
    """Label and trace one strip (``transform``: of its first row).

    Only the columns between the first and the last valid pixel are labelled, so a mostly
    empty strip costs what its data costs.
    """
    for cls in skip:
        valid &= values != cls
    columns = np.flatnonzero(valid.any(0))
    if not len(columns):
        return _empty_strip(values.shape[1])
    width = values.shape[1]
    first, stop = int(columns[0]), int(columns[-1]) + 1
    if (first, stop) != (0, width):
        cut = slice(first, stop)
        values, valid = values[:, cut], valid[:, cut]
        confidence = None if confidence is None else confidence[:, cut]
        transform = transform * Affine.translation(first, 0)
    regions = label_regions(values, valid, connectivity)
    pixel_count = regions.pixel_count()
    if np.all(pixel_areas == pixel_areas[0]):
        area = pixel_count * float(pixel_areas[0])
    else:
        area = regions.sum_per_row(pixel_areas)
    if confidence is not None:
        confidence_sum = regions.sum_of(confidence) * scale + offset * pixel_count
    else:
        confidence_sum = np.zeros(regions.count + 1)
    geometry = _trace(regions, pixel_count, transform)
    edges = np.zeros((4, width), np.int64)  # first and last rows' labels and classes
    edges[:, first:stop] = (regions.labels[0], regions.labels[-1], values[0], values[-1])
    return _Strip(edges[0], edges[1], edges[2], edges[3], regions.label_class, geometry,
                  pixel_count, area, confidence_sum)


def _empty_strip(width: int) -> _Strip:
    """A strip without regions: nothing in it joins a neighbour (its labels are all 0)."""
    nothing = np.zeros(width, np.int32)
    return _Strip(nothing, nothing, nothing, nothing, np.full(1, -1, np.int64),
                  np.empty(1, dtype=object), np.zeros(1, np.int64), np.zeros(1), np.zeros(1))


def _no_data_stored(ds: rasterio.DatasetReader, row0: int, row1: int) -> bool:
    """Whether a sparse GeoTIFF stores no block for rows ``[row0, row1)`` (all nodata)."""
    if ds.driver != "GTiff" or ds.nodata is None:
        return False
    block_rows, block_cols = ds.block_shapes[0]
    columns = range(-(-ds.width // block_cols))
    for block_row in range(row0 // block_rows, -(-row1 // block_rows)):
        for block_col in columns:
            if ds.get_tag_item(f"BLOCK_OFFSET_{block_col}_{block_row}", "TIFF", bidx=1):
                return False
    return True


def _trace(regions: Regions, pixel_count: np.ndarray, transform: Affine) -> np.ndarray:
    """One valid MultiPolygon per region in map coordinates (index = label; 0 unused).

    GDAL traces 4-connected pieces, valid polygons; with 8-connectivity a region may have
    several pieces, which touch only at corners and so form a valid MultiPolygon as they are.
    Single-pixel regions are made directly.
    """
    width = regions.labels.shape[1]
    single = regions.run_label > 0
    single &= pixel_count[regions.run_label] == 1
    rows, cols = np.divmod(regions.run_start[single], width)
    parts = [pixel_squares(rows, cols, transform)]
    owners = [regions.run_label[single].astype(np.int64)]
    traced = (regions.run_label > 0) & ~single
    if traced.any():
        mask = np.repeat(traced, regions.run_length).reshape(regions.labels.shape)
        polygons, values = polygons_from_shapes(rasterio.features.shapes(
            regions.labels, mask=mask, connectivity=4, transform=transform))
        if not _GDAL_TRACES_VALID:
            polygons, index = valid_parts(polygons)
            values = values[index]
        parts.append(polygons)
        owners.append(values.astype(np.int64))
    parts, owners = np.concatenate(parts), np.concatenate(owners)
    order = np.argsort(owners, kind="stable")
    unique, index = np.unique(owners[order], return_inverse=True)
    geometry = np.empty(len(pixel_count), dtype=object)
    geometry[unique] = shapely.multipolygons(parts[order], indices=index)
    return geometry


def _boundary_pairs(prev_keys: np.ndarray, prev_classes: np.ndarray, labels: np.ndarray,
                    classes: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (open group key, new label) pairs whose pixels touch across the boundary."""
    candidates = [(slice(None), slice(None))]
    if connectivity == 8:
        candidates += [(slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))]
    keys, new = [], []
    for above, below in candidates:
        k, lab = prev_keys[above], labels[below]
        joined = (k > 0) & (lab > 0) & (prev_classes[above] == classes[below])
        keys.append(k[joined])
        new.append(lab[joined].astype(np.int64))
    pairs = np.unique(np.stack([np.concatenate(keys), np.concatenate(new)]), axis=1)
    return pairs[0], pairs[1]


def _components(keys: np.ndarray, labels: np.ndarray
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Connected groups of the bipartite graph (open group keys) -- (new labels)."""
    if not len(keys):
        return
    key_ids, key_index = np.unique(keys, return_inverse=True)
    label_ids, label_index = np.unique(labels, return_inverse=True)
    n_keys = len(key_ids)
    size = n_keys + len(label_ids)
    graph = coo_matrix((np.ones(len(keys)), (key_index, n_keys + label_index)),
                       shape=(size, size))
    _, component = connected_components(graph, directed=False)
    key_component, label_component = component[:n_keys], component[n_keys:]
    key_order = np.argsort(key_component, kind="stable")
    label_order = np.argsort(label_component, kind="stable")
    key_splits = np.searchsorted(key_component[key_order], np.arange(1, component.max() + 1))
    label_splits = np.searchsorted(label_component[label_order],
                                   np.arange(1, component.max() + 1))
    yield from zip(np.split(key_ids[key_order], key_splits),
                   np.split(label_ids[label_order], label_splits))


def _finish(groups: list[_Group], with_confidence: bool, transform: Affine) -> RegionBatch:
    """Batch of finished groups; pieces from several strips are joined in pixel coordinates."""
    geometry = np.array([g.parts[0] for g in groups], dtype=object)
    joined = [i for i, g in enumerate(groups) if len(g.parts) > 1]
    if joined:
        pieces = to_pixel(np.concatenate([groups[i].parts for i in joined]), transform)
        bounds = np.cumsum([len(groups[i].parts) for i in joined])[:-1]
        unions = np.array([join_pieces(p) for p in np.split(pieces, bounds)], dtype=object)
        geometry[joined] = as_multipolygons(to_map(unions, transform))
    return RegionBatch(
        geometry,
        np.array([g.class_id for g in groups], dtype=np.int64),
        np.array([g.pixel_count for g in groups], dtype=np.int64),
        np.array([g.pixel_area_m2 for g in groups], dtype=np.float64),
        np.array([g.confidence_sum for g in groups]) if with_confidence else None)

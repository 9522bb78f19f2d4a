"""Merging regions smaller than a minimum area into their neighbours, on the class raster.

The rule, applied in rounds to the whole raster at once:

* a region (see :mod:`deeplab_geo.vectorize.regions`) is *small* when the ground area of its
  pixels is below ``min_area``;
* each small region that shares at least one pixel edge with a region that is not small takes
  the class it shares the most pixel edges with, counting only neighbours in regions that are
  not small (ties go to the lowest class id). It thereby joins that neighbour, so every region it
  becomes part of is at least ``min_area``;
* small regions with no such neighbour wait for the next round (their neighbours may have grown
  by then). Rounds repeat until one changes nothing, at most :data:`MAX_ROUNDS` times.

Small regions that are left (surrounded by nodata or by other small regions only) are dropped by
the vectorizer afterwards, so no output polygon is below ``min_area``.

Each round streams the raster in strips with a margin of rows above and below (a *window*). A
decision is taken from the window only when it is certain: the small region lies wholly inside
the window, and each neighbour either lies wholly inside it or already reaches ``min_area``
inside it. Otherwise the margin doubles and the strip is read again. Every round therefore gives
exactly what the rule gives on the whole raster, whatever the strip height (tested), while
memory stays at one window, which is the strip plus a margin that grows only where a region
near the strip's edge needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from deeplab_geo.raster.tiling import strip_bounds
from deeplab_geo.vectorize.labels import label_regions

MAX_ROUNDS = 16
"""Rounds of merging at most; each is one pass over the raster."""

_FIRST_MARGIN = 64


def merge_window(classes: np.ndarray, valid: np.ndarray, core: slice, *, cut_above: bool,
                 cut_below: bool, pixel_areas: np.ndarray, min_area: float,
                 connectivity: int) -> np.ndarray | None:
    """One round of the merge rule for the ``core`` rows of a window, or ``None`` if unsure.

    Args:
        classes, valid: the window's class ids and validity (2-D).
        core: the rows of the window whose result is wanted.
        cut_above, cut_below: whether the raster continues above the window's first row or
            below its last one (regions reaching a cut may be larger than they look).
        pixel_areas: ground area (m²) of a pixel in each row of the window.
        min_area: regions whose pixel area is below this (m²) are small.
        connectivity: 8 or 4, as for the regions of the vectorizer.

    Returns:
        The core rows after the round (nodata pixels unchanged), or ``None`` when some decision
        depends on pixels outside the window (read a taller window).
    """
    regions = label_regions(classes, valid, connectivity)
    labels, label_class, n = regions.labels, regions.label_class, regions.count
    area = regions.sum_per_row(pixel_areas)
    at_cut = np.zeros(n + 1, bool)
    if cut_above:
        at_cut[labels[0]] = True
    if cut_below:
        at_cut[labels[-1]] = True
    looks_small = area < min_area
    looks_small[0] = False
    large = ~looks_small
    large[0] = False
    unsure = looks_small & at_cut
    small = looks_small & ~at_cut
    in_core = np.zeros(n + 1, bool)
    in_core[labels[core]] = True
    in_core[0] = False
    if (unsure & in_core).any():
        return None
    deciding = small & in_core
    out = classes[core].copy()
    if not deciding.any():
        return out
    stride = int(label_class.max()) + 1
    edges = []
    for here, there in _neighbour_pairs(labels):
        chosen = deciding[here]
        if (chosen & unsure[there]).any():
            return None
        chosen &= large[there]
        edges.append(here[chosen].astype(np.int64) * stride + label_class[there[chosen]])
    keys, counts = np.unique(np.concatenate(edges), return_counts=True)
    region, target = keys // stride, keys % stride
    order = np.lexsort((target, -counts, region))
    first = np.ones(len(order), bool)
    first[1:] = region[order][1:] != region[order][:-1]
    new_class = label_class.copy()
    new_class[region[order][first]] = target[order][first]
    core_labels = labels[core]
    merging = core_labels > 0
    out[merging] = new_class[core_labels[merging]]
    return out


def _neighbour_pairs(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pixel, neighbour) label pairs across every pixel edge, in both directions."""
    left, right = labels[:, :-1].ravel(), labels[:, 1:].ravel()
    up, down = labels[:-1].ravel(), labels[1:].ravel()
    return [(left, right), (right, left), (up, down), (down, up)]


def merge_round(src: rasterio.DatasetReader, dst: rasterio.DatasetWriter, *, min_area: float,
                connectivity: int, pixel_areas: np.ndarray, strip_rows: int | None) -> int:
    """Apply one round of the rule from ``src`` to ``dst`` (same grid); return pixels changed."""
    changed = 0
    height = src.height
    for row0, row1 in strip_bounds(height, src.width, src.block_shapes[0][0], strip_rows):
        margin = _FIRST_MARGIN
        while True:
            top, bottom = max(0, row0 - margin), min(height, row1 + margin)
            window = Window(0, top, src.width, bottom - top)
            values = src.read(1, window=window)
            valid = (values != src.nodata) if src.nodata is not None else \
                src.read_masks(1, window=window) > 0
            out = merge_window(values, valid, slice(row0 - top, row1 - top),
                               cut_above=top > 0, cut_below=bottom < height,
                               pixel_areas=pixel_areas[top:bottom], min_area=min_area,
                               connectivity=connectivity)
            if out is not None:
                break
            margin *= 2
        changed += int(np.count_nonzero(out != values[row0 - top:row1 - top]))
        dst.write(out[None], window=Window(0, row0, src.width, row1 - row0))
    return changed


def merge_small_regions(src: Path, workdir: Path, *, min_area: float, connectivity: int,
                        pixel_areas: np.ndarray, strip_rows: int | None = None
                        ) -> tuple[Path, int]:
    """Run merge rounds until nothing changes (or :data:`MAX_ROUNDS`).

    Args:
        src: the class raster (band 1).
        workdir: folder for the intermediate rasters (the caller removes it).
        min_area, connectivity, pixel_areas: see :func:`merge_window`.
        strip_rows: rows per strip (default: whole blocks of about 4 Mpx).

    Returns:
        The raster after the last round that changed something (``src`` itself if none did)
        and the number of rounds run.
    """
    current = src
    for round_no in range(1, MAX_ROUNDS + 1):
        target = workdir / f"merged_{round_no}.tif"
        with rasterio.open(current) as ds:
            profile = {**ds.profile, "driver": "GTiff", "count": 1, "tiled": True,
                       "blockxsize": 512, "blockysize": 512, "compress": "deflate",
                       "zlevel": 1, "BIGTIFF": "IF_SAFER"}
            with rasterio.open(target, "w", **profile) as out:
                changed = merge_round(ds, out, min_area=min_area, connectivity=connectivity,
                                      pixel_areas=pixel_areas, strip_rows=strip_rows)
        if not changed:
            target.unlink()
            return current, round_no
        if current != src:
            current.unlink()
        current = target
    return current, MAX_ROUNDS

"""Polygon files and frames from a class raster: :func:`vectorize` and :func:`polygonize`.

See :mod:`deeplab_geo.vectorize` for what is written; regions come from
:mod:`deeplab_geo.vectorize.regions`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import rasterio
from affine import Affine
from pyproj import CRS

from deeplab_geo.config import VectorizeSettings
from deeplab_geo.errors import ConfigError, InputError, OutputError
from deeplab_geo.raster.stitch import Strip
from deeplab_geo.vectorize import SUFFIXES
from deeplab_geo.vectorize.geometry import (
    area_perimeter_m,
    as_multipolygons,
    densify_pixel_edges,
    row_pixel_areas,
    simplify_coverage,
    to_map,
    to_pixel,
)
from deeplab_geo.vectorize.labels import label_regions
from deeplab_geo.vectorize.regions import RegionBatch, iter_regions, iter_strip_regions
from deeplab_geo.vectorize.small_regions import merge_small_regions
from deeplab_geo.vectorize.writers import FeatureBatch, driver_for, write_features

__all__ = ["LAYER", "SUFFIXES", "VectorizeResult", "label_regions", "polygonize", "vectorize",
           "vectorize_strips", "write_polygons"]

LAYER = "landcover"
"""Name of the single layer."""


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize` wrote.

    Attributes:
        path: the polygon file.
        layers: features per layer.
        merge_rounds: rounds of small-region merging run (0 without ``min_area`` merging).
    """

    path: Path
    layers: dict[str, int]
    merge_rounds: int

    @property
    def polygons(self) -> int:
        """Features written, all layers together."""
        return sum(self.layers.values())


def vectorize(classes: str | Path, out: str | Path, *, class_names: list[str],
              settings: VectorizeSettings | None = None, confidence: str | Path | None = None,
              source: str | None = None, strip_rows: int | None = None) -> VectorizeResult:
    """Vectorize a class raster into a polygon file, streaming (see the module docstring).

    Args:
        classes: class raster (band 1 holds class ids; its nodata is not vectorized).
        out: output file; its extension picks the format (``.gpkg``, ``.fgb``, ``.geojson``,
            ``.parquet``). Written to a temporary file in the same folder, then renamed.
        class_names: name of each class id.
        settings: vectorize options (defaults: exact polygons, 8-connectivity, one layer).
        confidence: raster of the same grid averaged per polygon into ``mean_confidence``.
        source: value of the ``source`` field (default: the class raster's file name).
        strip_rows: rows read at a time (default: whole blocks of about 8 Mpx).

    Raises:
        ConfigError: ``skip_classes`` names an unknown class.
        InputError: the raster has no CRS, is not of an integer type, or holds a class id
            without a name.
        OutputError: unsupported extension or layout, the folder is missing, or the file cannot
            be written.
    """
    settings = settings or VectorizeSettings()
    out = Path(out)
    _check_output(out)
    with _feature_stream(Path(classes), confidence, class_names, settings, source, strip_rows,
                         workdir=out.parent) as stream:
        return _write(stream, out, settings)


def vectorize_strips(strips: Iterable[Strip], out: str | Path, *, crs: CRS, transform: Affine,
                     width: int, height: int, class_names: list[str],
                     settings: VectorizeSettings | None = None, with_confidence: bool = False,
                     confidence_scale: float = 1.0, nodata: int = 255,
                     source: str | None = None) -> VectorizeResult:
    """:func:`vectorize` for a class raster handed over in strips, top to bottom, as it is made
    (the pipeline's polygon stage; nothing is read back from disk).

    Args:
        strips: full-width strips in order (see :class:`deeplab_geo.raster.stitch.Strip`); strips
            without arrays are all nodata.
        crs, transform, width, height: the raster's grid.
        with_confidence: strips carry confidence values, averaged into ``mean_confidence``
            after multiplying them by ``confidence_scale``.
        nodata: the class value of pixels that belong to no region.

    Raises:
        ConfigError: ``min_area_mode: merge``, which needs the whole raster (use
            :func:`vectorize` on the file), or an unknown class in ``skip_classes``.
        InputError, OutputError: as :func:`vectorize`.
    """
    settings = settings or VectorizeSettings()
    if settings.min_area > 0 and settings.min_area_mode == "merge":
        raise ConfigError("vectorize.min_area_mode merge needs the whole class raster; "
                          "vectorize the file instead")
    out = Path(out)
    _check_output(out)
    crs = CRS.from_user_input(crs)
    regions = iter_strip_regions(
        strips, height=height, width=width, transform=transform, nodata=nodata,
        connectivity=settings.connectivity, skip=_skip_ids(settings.skip_classes, class_names),
        with_confidence=with_confidence, confidence_scale=confidence_scale,
        pixel_areas=row_pixel_areas(transform, crs, 0, height, width))
    context = _Context(crs, transform, class_names, source or out.stem, settings)
    stream = _Stream(crs, _schema(with_confidence), context.features(regions))
    return _write(stream, out, settings)


def _check_output(out: Path) -> None:
    driver_for(out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise OutputError(f"{out.parent}: not a writable folder; create it or choose another "
                          "output path")


def _write(stream: _Stream, out: Path, settings: VectorizeSettings) -> VectorizeResult:
    layer = _split_by_class if settings.layout == "per_class" else LAYER
    layers = write_features(stream.batches, out, schema=stream.schema, crs=stream.crs,
                            layer=layer)
    return VectorizeResult(out, layers, stream.merge_rounds)


def polygonize(classes_path: str | Path, confidence_path: str | Path | None,
               class_names: list[str], settings: VectorizeSettings | None = None, *,
               source: str | None = None, strip_rows: int | None = None) -> gpd.GeoDataFrame:
    """The polygons of :func:`vectorize` as a GeoDataFrame in memory (for small rasters).

    Without a confidence raster (ground truth, say) the ``mean_confidence`` field is omitted.
    """
    settings = settings or VectorizeSettings()
    with _feature_stream(Path(classes_path), confidence_path, class_names, settings, source,
                         strip_rows, workdir=None) as stream:
        batches = list(stream.batches)
        crs = stream.crs
        names = stream.schema.names[:-1]
    geometry = np.concatenate([b.geometry for b in batches]) if batches else np.empty(0, object)
    columns = {name: np.concatenate([b.columns[name] for b in batches]) if batches else []
               for name in names}
    return gpd.GeoDataFrame(columns, geometry=list(geometry), crs=crs)


def write_polygons(frame: gpd.GeoDataFrame, path: str | Path, layer: str = LAYER) -> None:
    """Write a frame from :func:`polygonize` atomically, in the format of ``path``'s extension.

    Raises:
        OutputError: unsupported extension, or the file cannot be written.
    """
    names = [c for c in frame.columns if c != frame.geometry.name]
    columns = {name: frame[name].to_numpy() for name in names}
    schema = pa.schema([pa.field(name, pa.array(columns[name]).type) for name in names]
                       + [pa.field("geometry", pa.binary())])
    batch = FeatureBatch(as_multipolygons(np.asarray(frame.geometry.array)), columns)
    write_features([batch], Path(path), schema=schema, crs=CRS.from_user_input(frame.crs),
                   layer=layer)


@dataclass
class _Stream:
    crs: CRS
    schema: pa.Schema
    batches: Iterable[FeatureBatch]
    merge_rounds: int = 0


@contextmanager
def _feature_stream(classes: Path, confidence: str | Path | None, class_names: list[str],
                    settings: VectorizeSettings, source: str | None, strip_rows: int | None,
                    workdir: Path | None) -> Iterator[_Stream]:
    with rasterio.open(classes) as ds:
        if ds.crs is None:
            raise InputError(f"{classes.name}: class raster has no CRS; georeference it first "
                             "(e.g. gdal_edit.py -a_srs)")
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise InputError(f"{classes.name}: class raster has data type {ds.dtypes[0]}; "
                             "vectorizing needs integer class ids")
        crs = CRS.from_wkt(ds.crs.to_wkt())
        transform = ds.transform
        pixel_areas = row_pixel_areas(transform, crs, 0, ds.height, ds.width)
    skip = _skip_ids(settings.skip_classes, class_names)
    context = _Context(crs, transform, class_names, source or classes.name, settings)
    schema = _schema(with_confidence=confidence is not None)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=".vectorize-", dir=workdir)))
        src, rounds = classes, 0
        if settings.min_area > 0 and settings.min_area_mode == "merge":
            src, rounds = merge_small_regions(classes, tmp, min_area=settings.min_area,
                                              connectivity=settings.connectivity,
                                              pixel_areas=pixel_areas, strip_rows=strip_rows)
        ds = stack.enter_context(rasterio.open(src))
        conf = stack.enter_context(rasterio.open(confidence)) if confidence is not None else None
        regions = iter_regions(ds, connectivity=settings.connectivity, skip=skip,
                               confidence=conf, pixel_areas=pixel_areas, strip_rows=strip_rows,
                               workers=settings.workers)
        yield _Stream(crs, schema, context.features(regions), rounds)


@dataclass(frozen=True)
class _Context:
    crs: CRS
    transform: Affine
    class_names: list[str]
    source: str
    settings: VectorizeSettings

    def features(self, regions: Iterable[RegionBatch]) -> Iterator[FeatureBatch]:
        """Regions to features: small ones dropped, the coverage simplified, attributes added."""
        kept = (self._large(batch) for batch in regions)
        if self.settings.simplify <= 0:
            for batch in kept:
                if len(batch):
                    yield self._attributes(batch, batch.geometry)
            return
        batch = _concat([b for b in kept if len(b)])
        if len(batch):
            exact = densify_pixel_edges(to_pixel(batch.geometry, self.transform))
            geometry = simplify_coverage(to_map(exact, self.transform), self.settings.simplify)
            yield self._attributes(batch, geometry)

    def _large(self, batch: RegionBatch) -> RegionBatch:
        if self.settings.min_area <= 0:
            return batch
        return batch.select(batch.pixel_area_m2 >= self.settings.min_area)

    def _attributes(self, batch: RegionBatch, geometry: np.ndarray) -> FeatureBatch:
        if len(batch) and batch.class_id.max() >= len(self.class_names):
            missing = int(batch.class_id.max())
            raise InputError(f"class id {missing} has no name (only {len(self.class_names)} "
                             "class names given); give a name for every class id")
        area, perimeter = area_perimeter_m(geometry, self.crs)
        columns = {"class_id": batch.class_id.astype(np.int32),
                   "class_name": np.array(self.class_names, dtype=object)[batch.class_id],
                   "area_m2": area}
        if batch.confidence_sum is not None:
            columns["mean_confidence"] = (batch.confidence_sum / batch.pixel_count
                                          ).astype(np.float32)
        columns["perimeter_m"] = perimeter
        columns["pixel_count"] = batch.pixel_count
        columns["source"] = np.full(len(batch), self.source, dtype=object)
        return FeatureBatch(geometry, columns)


def _schema(with_confidence: bool) -> pa.Schema:
    fields = [pa.field("class_id", pa.int32()), pa.field("class_name", pa.string()),
              pa.field("area_m2", pa.float64())]
    if with_confidence:
        fields.append(pa.field("mean_confidence", pa.float32()))
    fields += [pa.field("perimeter_m", pa.float64()), pa.field("pixel_count", pa.int64()),
               pa.field("source", pa.string()), pa.field("geometry", pa.binary())]
    return pa.schema(fields)


def _concat(batches: list[RegionBatch]) -> RegionBatch:
    if not batches:
        empty = np.empty(0, np.int64)
        return RegionBatch(np.empty(0, object), empty, empty, np.empty(0), None)
    confidence = (None if batches[0].confidence_sum is None
                  else np.concatenate([b.confidence_sum for b in batches]))
    return RegionBatch(np.concatenate([b.geometry for b in batches]),
                       np.concatenate([b.class_id for b in batches]),
                       np.concatenate([b.pixel_count for b in batches]),
                       np.concatenate([b.pixel_area_m2 for b in batches]), confidence)


def _skip_ids(skip: list[str | int], class_names: list[str]) -> tuple[int, ...]:
    ids = []
    for item in skip:
        if isinstance(item, int):
            ids.append(item)
        elif item in class_names:
            ids.append(class_names.index(item))
        else:
            raise ConfigError(f"vectorize.skip_classes: unknown class '{item}'; classes are "
                              f"{', '.join(class_names)}")
    return tuple(ids)


def _split_by_class(batch: FeatureBatch) -> Iterator[tuple[str, FeatureBatch]]:
    ids = batch.columns["class_id"]
    for cls in np.unique(ids):
        part = batch.select(ids == cls)
        yield str(part.columns["class_name"][0]), part


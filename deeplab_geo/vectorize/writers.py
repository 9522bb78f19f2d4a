"""Writing polygons: streamed, atomic, in the format named by the file's extension.

| extension | format | layers | spatial index |
|---|---|---|---|
| ``.gpkg`` | GeoPackage (GDAL) | one, or one per class | R-tree (``SPATIAL_INDEX=YES``) |
| ``.fgb`` | FlatGeobuf (GDAL) | one | packed Hilbert R-tree |
| ``.geojson``, ``.json`` | GeoJSON (GDAL) | one | none |
| ``.parquet`` | GeoParquet 1.1 (pyarrow), WKB geometries | one | none (row groups) |

Batches are streamed to the file as they come (one Arrow stream into GDAL, or one Parquet row
group per batch), so a writer never holds all features. The file is written under a hidden
temporary name in the same folder and renamed over the final name only once it is complete.
Coordinates are written in the raster's CRS as they are, never reprojected; GeoJSON, which can
only name a CRS by its EPSG code, is refused for a CRS that has none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.errors
import shapely
from pyproj import CRS

from deeplab_geo.errors import OutputError
from deeplab_geo.files import atomic_path
from deeplab_geo.raster.io import user_folder, write_failure_cause

DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".parquet": "GeoParquet"}
"""Output drivers by file extension."""

MULTI_LAYER = ("GPKG",)
_LAYER_OPTIONS = {"GPKG": {"SPATIAL_INDEX": "YES"}, "FlatGeobuf": {"SPATIAL_INDEX": "YES"}}
_WRITE_ERRORS = (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
                 pyogrio.errors.FieldError, pyogrio.errors.GeometryError, pa.ArrowException)


def driver_for(path: Path) -> str:
    """The output driver for ``path``'s extension.

    Raises:
        OutputError: the extension names no supported format.
    """
    driver = DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise OutputError(f"{path}: unsupported polygon format '{Path(path).suffix}'; use one "
                          f"of {', '.join(DRIVERS)}")
    return driver


@dataclass(frozen=True)
class FeatureBatch:
    """Features ready to write: map-coordinate MultiPolygons and attribute columns in order."""

    geometry: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.geometry)

    def select(self, keep: np.ndarray) -> FeatureBatch:
        """The features that ``keep`` (a boolean mask or index array) selects."""
        return FeatureBatch(self.geometry[keep], {k: v[keep] for k, v in self.columns.items()})

    def to_arrow(self, schema: pa.Schema) -> pa.RecordBatch:
        """The batch as an Arrow record batch with WKB geometries in ``geometry``."""
        arrays = [pa.array(self.columns[name], type=schema.field(name).type)
                  for name in schema.names[:-1]]
        arrays.append(pa.array(shapely.to_wkb(self.geometry, flavor="iso"), type=pa.binary()))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_features(batches: Iterable[FeatureBatch], path: Path, *, schema: pa.Schema, crs: CRS,
                   layer: str | Callable[[FeatureBatch], Iterable[tuple[str, FeatureBatch]]]
                   ) -> dict[str, int]:
    """Write batches of features atomically to ``path`` (format from its extension).

    Args:
        batches: the features, streamed; their columns match ``schema`` (geometry last).
        path: the output file; replaced only when writing succeeded.
        schema: Arrow schema of the attribute columns followed by a binary ``geometry`` field.
        crs: the coordinates' CRS, written as it is.
        layer: the layer name, or a function that splits a batch into ``(layer, batch)`` pairs
            (one layer per class; GeoPackage only).

    Returns:
        Features written per layer.

    Raises:
        OutputError: unsupported format or CRS, or the file cannot be written.
    """
    path = Path(path)
    driver = driver_for(path)
    if driver == "GeoJSON" and crs.to_epsg() is None:
        raise OutputError(f"{path.name}: GeoJSON can only name a CRS by EPSG code and this CRS "
                          "has none; write .gpkg, .fgb or .parquet instead")
    if callable(layer) and driver not in MULTI_LAYER:
        raise OutputError(f"{path.name}: one layer per class needs a GeoPackage (.gpkg)")
    failure: list[BaseException] = []
    batches = _remember_failure(batches, failure)
    try:
        with atomic_path(path) as tmp:
            if driver == "GeoParquet":
                return {str(layer): _write_parquet(batches, tmp, schema, crs)}
            if callable(layer):
                return _write_layers(batches, tmp, driver, schema, crs, layer)
            return {layer: _write_stream(batches, tmp, driver, schema, crs, layer)}
    except BaseException as exc:
        if failure:  # the features failed, not the writer: raise that error as it was
            raise failure[0] from None
        if isinstance(exc, _WRITE_ERRORS):
            raise OutputError(f"{user_folder(path.parent)}: cannot write polygons "
                              f"({write_failure_cause(path.parent, exc)}); free some space or "
                              "choose another output folder") from None
        raise


def _remember_failure(batches: Iterable[FeatureBatch], failure: list[BaseException]
                      ) -> Iterator[FeatureBatch]:
    """Pass batches through, keeping any exception so that it survives the Arrow C stream."""
    try:
        yield from batches
    except BaseException as exc:
        failure.append(exc)
        raise



def _write_stream(batches: Iterable[FeatureBatch], tmp: Path, driver: str, schema: pa.Schema,
                  crs: CRS, layer: str) -> int:
    count = 0

    def record_batches() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in batches:
            count += len(batch)
            yield batch.to_arrow(schema)

    reader = pa.RecordBatchReader.from_batches(schema, record_batches())
    pyogrio.write_arrow(reader, tmp, layer=layer, driver=driver, geometry_name="geometry",
                        geometry_type="MultiPolygon", crs=crs.to_wkt(),
                        layer_options=_LAYER_OPTIONS.get(driver))
    return count


def _write_layers(batches: Iterable[FeatureBatch], tmp: Path, driver: str, schema: pa.Schema,
                  crs: CRS, split: Callable[[FeatureBatch], Iterable[tuple[str, FeatureBatch]]]
                  ) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in batches:
        for name, part in split(batch):
            table = pa.Table.from_batches([part.to_arrow(schema)])
            pyogrio.write_arrow(table, tmp, layer=name, driver=driver, geometry_name="geometry",
                                geometry_type="MultiPolygon", crs=crs.to_wkt(),
                                append=name in counts, layer_options=_LAYER_OPTIONS.get(driver))
            counts[name] = counts.get(name, 0) + len(part)
    if not counts:  # nothing to write: still leave a valid, empty GeoPackage
        _write_stream([], tmp, driver, schema, crs, "empty")
    return counts


def _write_parquet(batches: Iterable[FeatureBatch], tmp: Path, schema: pa.Schema,
                   crs: CRS) -> int:
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["MultiPolygon"],
                                    "crs": crs.to_json_dict()}}}
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    count = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in batches:
            if len(batch):
                writer.write_batch(batch.to_arrow(schema))
                count += len(batch)
    return count

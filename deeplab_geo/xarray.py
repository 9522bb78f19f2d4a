"""Lazy segmentation of xarray DataArrays: deeplab-geo as a step of someone else's pipeline.

Importing this module registers a ``.deeplab`` accessor on :class:`xarray.DataArray`::

    import rioxarray, deeplab_geo.xarray
    image = rioxarray.open_rasterio("scene.tif", chunks=True)       # lazy, dask-backed
    result = image.deeplab.segment(checkpoint="builtin:landcover-demo", crf=True)
    result.classes.rio.to_raster("classes.tif", tiled=True)            # computed here, in blocks
    deeplab_geo.xarray.vectorize(result.classes, "polygons.gpkg")
    deeplab_geo.xarray.write(result, "out/", stem="scene")            # COGs and a GeoPackage

The result is an :class:`xarray.Dataset` with ``classes`` (uint8, nodata 255) and
``confidence`` (uint8 percent, nodata 255) on the input's ``x``/``y`` coordinates and CRS, the
class names and colours in attributes. With a dask-backed input nothing is computed before
``.compute()``, a write or a ``dask.distributed`` Client asks for it; with a NumPy-backed input
the result is computed at once.

The graph is one :func:`dask.array.map_overlap` call. Its output blocks are the cores of the
tiles :mod:`deeplab_geo.raster.tiling` cuts (one row of tiles high, ``batch_size`` tiles wide), its
depth is the largest distance from a core to its tile's edge and its boundary is ``"none"``, so
each block holds every tile it needs; the block function cuts each tile's window out and hands
the windows to :func:`~deeplab_geo.pipeline.windows.process_windows`, the code ``deeplab-geo run``
uses.
The input is rechunked to those blocks first, so its own chunking does not change the result.
Models are loaded once per process (the backend caches them), so once per worker on a cluster.

The result equals ``deeplab-geo run``'s class raster at the same tile size and overlap up to
two differences (see the docs, "Python and xarray"): the CRF's colour stretch of non-8-bit
data is measured on every n-th pixel of the array instead of GDAL's decimated read, and
windows are batched per block row instead of across the raster, which changes floating-point
summation order in a batched forward pass. Both move a handful of pixels whose two best classes
are nearly tied.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from deeplab_geo import crf as crf_module
from deeplab_geo.config import PipelineConfig, load_pipeline, updated
from deeplab_geo.errors import ConfigError, InputError
from deeplab_geo.pipeline.runner import output_names
from deeplab_geo.pipeline.windows import (
    WindowSettings,
    array_window,
    crf_params,
    plan_windows,
    process_windows,
    window_settings,
)
from deeplab_geo.plugins import choose_backend, load_model
from deeplab_geo.raster import io, tiling
from deeplab_geo.raster.stitch import CLASS_NODATA, CONFIDENCE_NODATA, CONFIDENCE_SCALE, Strip

__all__ = ["segment", "vectorize", "write", "DeepLabAccessor"]

_STRETCH_SAMPLE = 1024  # longest side of the sample the CRF's colour stretch is measured on


def segment(image: xr.DataArray, checkpoint: str | None = None, *,
            pipeline: str | Path | None = None, tile_size: int | None = None,
            overlap: int | str | None = None, batch_size: int | None = None,
            crf: bool | dict[str, Any] | None = None, tta: dict[str, Any] | None = None,
            backend: str | None = None, device: str | None = None,
            resolution: str | float | None = None, confidence: bool = True) -> xr.Dataset:
    """Segment a ``(band, y, x)`` (or ``(y, x)``) DataArray; see the module docstring.

    Args:
        image: georeferenced through rioxarray (``image.rio.crs``, ``image.rio.transform()``);
            its nodata (``image.rio.nodata``, or NaN in float data) is left out.
        checkpoint: as ``model.checkpoint`` in a pipeline (default: the pipeline's, or the
            bundled demo model).
        pipeline: a pipeline YAML whose model, tiling, CRF and TTA settings are the starting
            point; the other arguments override them.
        tile_size, overlap, batch_size, resolution, backend, device: as ``tiling.tile_size``,
            ``tiling.overlap`` (``"auto"`` too), ``model.batch_size``, ``model.resolution``,
            ``model.backend`` and ``model.device``.
        crf: ``True``/``False``, or a dict of ``crf`` settings (CRF on).
        tta: a dict of ``tta`` settings (``{"flip": True, "scales": [0.5, 0.75, 1.0]}``).
        confidence: also return ``confidence``.

    Raises:
        ConfigError: settings that do not validate.
        InputError: an array without a CRS, with bands the model does not take, or of a data
            type deeplab-geo does not read.
    """
    config = _config(pipeline, checkpoint=checkpoint, tile_size=tile_size, overlap=overlap,
                     batch_size=batch_size, crf=crf, tta=tta, backend=backend, device=device,
                     resolution=resolution, confidence=confidence)
    image, (y_dim, x_dim) = _bands_first(image)
    grid = _grid(image)
    predictor = load_model(config.model.backend, config.model.checkpoint, config.model.device,
                           config.model.metadata, precision=config.model.precision)
    info = predictor.info
    io.check_raster(grid, bands=info.in_channels)
    plan = plan_windows(config, info, grid)
    refine = crf_params(config, plan, grid)
    settings = window_settings(config, plan, None if refine is None else (refine, None))
    data = image.data if isinstance(image.data, da.Array) else da.from_array(image.data)
    colours = None if refine is None else _colours(data, grid, config.crf.bands,
                                                   config.crf.stretch)  # set per block
    rows, cols = plan.spans(grid.height), plan.spans(grid.width)
    groups = tiling.batched(list(range(len(cols))), plan.batch_size)
    row_chunks = tuple(core.size for _, core in rows)
    col_chunks = tuple(sum(cols[i][1].size for i in group) for group in groups)
    depth = {0: 0, 1: _depth(rows), 2: _depth(cols)}
    data = data.rechunk({0: -1, 1: row_chunks, 2: col_chunks})
    out = da.map_overlap(
        _segment_block, data, depth=depth, boundary="none", trim=False,
        dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8),
        chunks=((2,), row_chunks, col_chunks),
        rows=rows, cols=cols, groups=groups, depth_px=(depth[1], depth[2]),
        settings=settings, colours=colours, nodata=grid.nodata)
    result = _dataset(image, out, grid, info.classes, info.colours, y_dim, x_dim, confidence)
    return result if isinstance(image.data, da.Array) else result.compute()


def _config(pipeline: str | Path | None, **given: Any) -> PipelineConfig:
    """The pipeline's settings with the arguments given laid over them (unset stays unset, so
    that, as in a YAML file, only what is asked for explicitly is checked against the model)."""
    base: dict[str, Any] = {}
    if pipeline is not None:
        base = load_pipeline(pipeline).model_dump(exclude_unset=True)
    base.setdefault("input", "array")
    base.setdefault("output_dir", ".")
    sections = {"model": {}, "tiling": {}, "outputs": {}}
    for key, section, field in (("checkpoint", "model", "checkpoint"),
                                ("batch_size", "model", "batch_size"),
                                ("backend", "model", "backend"), ("device", "model", "device"),
                                ("resolution", "model", "resolution"),
                                ("tile_size", "tiling", "tile_size"),
                                ("overlap", "tiling", "overlap")):
        if given[key] is not None:
            sections[section][field] = given[key]
    sections["outputs"]["confidence"] = given["confidence"]
    crf = given["crf"]
    if crf is not None:
        sections["crf"] = {"enabled": bool(crf)} if isinstance(crf, bool) \
            else {"enabled": True, **crf}
    if given["tta"] is not None:
        sections["tta"] = dict(given["tta"])
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    try:
        config = PipelineConfig.model_validate(base)
    except ValueError as exc:
        raise ConfigError(f"deeplab_geo.xarray.segment: {exc}") from None
    backend = choose_backend(config.model.backend, config.model.device)
    return updated(config, {"model.backend": backend})


def _bands_first(image: xr.DataArray) -> tuple[xr.DataArray, tuple[str, str]]:
    """``image`` as ``(band, y, x)`` and the names of its y and x dimensions."""
    if not isinstance(image, xr.DataArray):
        raise InputError(f"segment takes an xarray.DataArray, not {type(image).__name__}; "
                         "open rasters with rioxarray.open_rasterio")
    try:
        y_dim, x_dim = image.rio.y_dim, image.rio.x_dim
    except Exception:  # noqa: BLE001 - rioxarray's own error names no fix
        raise InputError(f"the array's dimensions {image.dims} hold no x and y; name them x "
                         "and y (or set them with .rio.set_spatial_dims)") from None
    others = [d for d in image.dims if d not in (y_dim, x_dim)]
    if not others:
        image = image.expand_dims("band")
        others = ["band"]
    band = "band" if "band" in others else others[-1]  # rioxarray's name, else the nearest
    if len(others) > 1:
        extra = ", ".join(str(d) for d in others if d != band)
        raise InputError(f"the array has dimensions {image.dims}; segment one ({band}, y, x) "
                         f"image at a time: select the others ({extra}) first, e.g. "
                         f".isel({extra.split(', ')[0]}=0)")
    return image.transpose(band, y_dim, x_dim), (y_dim, x_dim)


def _grid(image: xr.DataArray) -> io.Grid:
    crs = image.rio.crs
    nodata = image.rio.nodata
    if nodata is None:
        nodata = image.rio.encoded_nodata
    return io.Grid(width=image.shape[2], height=image.shape[1],
                   transform=image.rio.transform(recalc=True), crs=crs,
                   name=str(image.name or "array"), count=image.shape[0],
                   dtype=str(image.dtype), nodata=None if nodata is None else float(nodata))


def _depth(spans: list[tuple[tiling.Span, tiling.Span]]) -> int:
    """The farthest any tile reaches past its core: the overlap each block needs."""
    return max(max(core.start - tile.start, tile.stop - core.stop) for tile, core in spans)


def _colours(data: da.Array, grid: io.Grid, bands: list[int] | None,
             stretch: tuple[float, float]) -> Any:
    """The CRF's colour mapping: known now for 8-bit data, else a delayed stretch measured on
    every n-th pixel (at most 1024 px on the longer side), so every block is stretched the
    same way."""
    chosen = crf_module.colour_bands(grid.count, bands)
    if grid.dtype == "uint8":
        return crf_module.ColourMapping(chosen)
    step = max(1, math.ceil(max(grid.height, grid.width) / _STRETCH_SAMPLE))
    sample = data[list(chosen), step // 2::step, step // 2::step]
    return dask.delayed(_stretch)(sample, chosen, grid.nodata, stretch)


def _stretch(sample: np.ndarray, bands: tuple[int, int, int], nodata: float | None,
             stretch: tuple[float, float]) -> crf_module.ColourMapping:
    invalid = np.zeros(sample.shape, bool)
    if sample.dtype.kind == "f":
        invalid |= np.isnan(sample)
    if nodata is not None and not math.isnan(nodata):
        invalid |= sample == sample.dtype.type(nodata)
    return crf_module.stretched(bands, np.ma.masked_array(sample, invalid), stretch)


def _segment_block(block: np.ndarray, *, rows: list, cols: list, groups: list[list[int]],
                   depth_px: tuple[int, int], settings: WindowSettings, colours: Any,
                   nodata: float | None, block_id: tuple[int, int, int] | None = None
                   ) -> np.ndarray:
    """The classes and confidence ``(2, h, w)`` of one output block: the cores of one row of
    tiles, ``batch_size`` tiles wide, cut from ``block`` (the block and its overlap)."""
    _, i, j = block_id
    row_tile, row_core = rows[i]
    group = [cols[k] for k in groups[j]]
    row_off = row_core.start - min(depth_px[0], row_core.start)
    col_off = group[0][1].start - min(depth_px[1], group[0][1].start)
    if colours is not None:
        settings = replace(settings, colours=colours)
    tiles = [tiling.Tile(row_tile, col_tile, row_core, col_core) for col_tile, col_core in group]
    out = np.full((2, row_core.size, sum(core.size for _, core in group)), CLASS_NODATA,
                  np.uint8)
    if not settings.confidence:
        out[1] = CONFIDENCE_NODATA
    for batch in tiling.batches(tiles, settings.plan.batch_size):
        reads = [array_window(np.asarray(block[:, t.row.start - row_off:t.row.stop - row_off,
                                               t.col.start - col_off:t.col.stop - col_off]),
                              nodata, t.core_slices) for t in batch]
        for tile, core in zip(batch, process_windows(settings, batch, reads)):
            if core is None:
                continue
            c0 = tile.core_col.start - group[0][1].start
            columns = slice(c0, c0 + tile.core_col.size)
            out[0][:, columns] = core[0]
            if core[1] is not None:
                out[1][:, columns] = core[1]
    return out


def _dataset(image: xr.DataArray, out: da.Array, grid: io.Grid, names: list[str],
             colours: list[tuple[int, int, int]] | None, y_dim: str, x_dim: str,
             confidence: bool) -> xr.Dataset:
    coords = {name: coord for name, coord in image.coords.items()
              if set(coord.dims) <= {y_dim, x_dim}}
    attrs = {"class_names": list(names), "class_values": list(range(len(names)))}
    if colours:
        attrs["class_colours"] = ["#{:02x}{:02x}{:02x}".format(*c[:3]) for c in colours]
    variables = {"classes": (out[0], {**attrs, "long_name": "land-cover class"})}
    if confidence:
        variables["confidence"] = (out[1], {"long_name": "confidence of the class (percent)",
                                            "scale_factor_to_probability": CONFIDENCE_SCALE})
    ds = xr.Dataset({name: xr.DataArray(array, dims=(y_dim, x_dim), coords=coords, attrs=a)
                     for name, (array, a) in variables.items()}, attrs=attrs)
    for name in ds.data_vars:
        ds[name] = ds[name].rio.write_nodata(CLASS_NODATA, encoded=False)
        if grid.crs is not None:
            ds[name] = ds[name].rio.write_crs(grid.crs)
    if grid.crs is not None:
        ds = ds.rio.write_crs(grid.crs)
    return ds


def vectorize(classes: xr.DataArray, path: str | Path | None = None, *,
              settings: Any = None, confidence: xr.DataArray | None = None) -> Any:
    """Polygons of a class array, as ``deeplab-geo run`` makes them.

    The array is computed in strips of whole rows, top to bottom, and each strip is traced as
    it comes (dask-backed arrays are never held whole). With ``path`` the polygons stream into
    that file (its extension picks the format) and the :class:`VectorizeResult` comes back;
    without, a :class:`geopandas.GeoDataFrame` (for arrays whose polygons fit in memory).

    Args:
        classes: the ``classes`` of :func:`segment` (its ``class_names`` attribute names the
            class values; nodata 255 is left out).
        settings: a :class:`deeplab_geo.config.VectorizeSettings` or a dict of them.
        confidence: averaged per polygon into ``mean_confidence`` (default: none).
    """
    grid = _class_grid(classes)
    settings = _vectorize_settings(settings)
    if path is not None:
        return _vectorize_to(_strips(classes, confidence), Path(path), grid, classes,
                             settings, confidence is not None)
    import geopandas

    with tempfile.TemporaryDirectory(prefix="deeplab-geo-") as folder:
        out = Path(folder) / "polygons.gpkg"
        _vectorize_to(_strips(classes, confidence), out, grid, classes, settings,
                      confidence is not None)
        return geopandas.read_file(out)


def write(result: xr.Dataset, output_dir: str | Path, *, stem: str = "segmented",
          polygons: bool | dict[str, Any] = True) -> dict[str, Path]:
    """Write a :func:`segment` result as ``deeplab-geo run`` writes its outputs: the class and
    confidence rasters as Cloud Optimized GeoTIFFs (colour table, class names, overviews) and,
    with ``polygons``, a GeoPackage (a dict: ``vectorize`` settings).

    One pass over the result, strip by strip: each strip is computed once, written at every
    overview level and traced into polygons, so memory stays bounded however large the lazy
    array. Outputs are staged in ``output_dir`` and appear together, or not at all.

    Returns:
        The final paths (``classes``, ``confidence``, ``polygons``).
    """
    from deeplab_geo.raster.stitch import ClassMapWriter

    classes = result["classes"]
    confidence = result["confidence"] if "confidence" in result else None
    grid = _class_grid(classes)
    names = list(classes.attrs["class_names"])
    colours = [[int(h[i:i + 2], 16) for i in (1, 3, 5)]
               for h in classes.attrs.get("class_colours", [])] or None
    output_dir = Path(output_dir)
    settings = None
    if polygons:
        settings = _vectorize_settings(polygons if isinstance(polygons, dict) else None)
    wanted = {"classes": True, "confidence": confidence is not None, "polygons": bool(polygons)}
    files = {key: name for key, name in output_names(
        Path(f"{stem}.tif"), settings.format if settings else "gpkg").items()
        if wanted.get(key)}  # the names `deeplab-geo run` gives its outputs
    profile = {"crs": grid.crs, "transform": grid.transform, "width": grid.width,
               "height": grid.height}
    with io.staged_outputs(output_dir) as staging:
        staged = {key: staging / name for key, name in files.items()}
        writer = ClassMapWriter(profile, staged["classes"], staged.get("confidence"), names,
                                colours or _grey(len(names)))
        try:
            def written():
                for strip in _strips(classes, confidence):
                    writer.write(strip)
                    yield strip

            if settings is not None:
                _vectorize_to(written(), staged["polygons"], grid, classes, settings,
                              confidence is not None)
            else:
                for _ in written():
                    pass
            writer.finish()
        finally:
            writer.close()
        return io.publish(staged, output_dir)


def _class_grid(classes: xr.DataArray) -> io.Grid:
    if not classes.attrs.get("class_names"):
        raise InputError("the class array has no class_names attribute; pass the classes of "
                         "deeplab_geo.xarray.segment")
    if classes.rio.crs is None:
        raise InputError("the class array has no CRS; write one with .rio.write_crs")
    height, width = classes.shape
    return io.Grid(name=str(classes.name or "classes"), crs=classes.rio.crs,
                   transform=classes.rio.transform(recalc=True), width=width, height=height,
                   dtype="uint8", nodata=CLASS_NODATA)


def _vectorize_settings(settings: Any) -> Any:
    from deeplab_geo.config import VectorizeSettings

    if isinstance(settings, VectorizeSettings):
        return settings
    try:
        return VectorizeSettings.model_validate(settings or {})
    except ValueError as exc:
        raise ConfigError(f"vectorize settings: {exc}") from None


def _strips(classes: xr.DataArray, confidence: xr.DataArray | None):
    """Full-width strips of whole 512-row blocks, top to bottom (a strip that is all nodata
    carries no arrays).

    The array is computed one row of its own chunks at a time (a :func:`segment` result: one
    row of tiles), each exactly once, and cut into block-aligned strips from a buffer of at most
    one chunk row plus a block."""
    height, width = classes.shape
    parts = [classes.data] + ([confidence.data] if confidence is not None else [])
    parts = [p if isinstance(p, da.Array) else da.from_array(p, chunks=(512, -1))
             for p in parts]
    bounds = [int(b) for b in np.cumsum((0,) + parts[0].chunks[0])]
    buffered: list[list[np.ndarray]] = [[] for _ in parts]
    row0 = 0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for held, value in zip(buffered, dask.compute(*[p[start:stop] for p in parts])):
            held.append(np.asarray(value, np.uint8))
        ready = stop if stop == height else row0 + (stop - row0) // 512 * 512
        if ready == row0:
            continue
        joined = [np.concatenate(held) for held in buffered]
        cut = ready - row0
        buffered = [[j[cut:]] for j in joined]
        strip = [j[:cut] for j in joined]
        if (strip[0] == CLASS_NODATA).all():
            yield Strip(row0, ready, None, None)
        else:
            yield Strip(row0, ready, strip[0], strip[1] if len(strip) > 1 else None)
        row0 = ready


def _vectorize_to(strips: Any, out: Path, grid: io.Grid, classes: xr.DataArray, settings: Any,
                  with_confidence: bool) -> Any:
    from deeplab_geo.vectorize import vectorize_strips

    return vectorize_strips(strips, out, crs=grid.crs, transform=grid.transform,
                            width=grid.width, height=grid.height,
                            class_names=list(classes.attrs["class_names"]), settings=settings,
                            with_confidence=with_confidence, confidence_scale=CONFIDENCE_SCALE,
                            nodata=CLASS_NODATA, source=grid.name)


def _grey(count: int) -> list[list[int]]:
    return [[round(255 * i / max(1, count - 1))] * 3 for i in range(count)]


@xr.register_dataarray_accessor("deeplab")
class DeepLabAccessor:
    """``DataArray.deeplab``: :func:`segment` and :func:`vectorize` as methods."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def segment(self, checkpoint: str | None = None, **options: Any) -> xr.Dataset:
        """:func:`deeplab_geo.xarray.segment` of this array."""
        return segment(self._obj, checkpoint, **options)

    def vectorize(self, path: str | Path | None = None, **options: Any) -> Any:
        """:func:`deeplab_geo.xarray.vectorize` of this class array."""
        return vectorize(self._obj, path, **options)

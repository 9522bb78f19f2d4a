"""Window processing, the core every execution path shares: read, resample, predict, refine,
crop.

:func:`plan_windows` decides the geometry of a run from the model and the raster: the tile and
overlap on the raster's grid, and the factor between the raster's pixels and the model's (its
ground sampling distance, see ``model.resolution``). Tiling, the CRF and the model all work at
the model's resolution; each window is read on the raster's grid, resampled to the model's
(area averaging when shrinking, bilinear when enlarging), predicted and refined there, and its
probabilities are resampled back, so the class raster stays on the input grid and the cores
of :mod:`deeplab_geo.raster.tiling` still partition it exactly.

:func:`process_windows` does that for one batch of windows and returns their cores; the file
pipeline reads them from a raster (:func:`process_batch`), the xarray accessor
(:mod:`deeplab_geo.xarray`) takes them from a dask array's blocks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
import rasterio

from deeplab_geo import crf as crf_module
from deeplab_geo.checkpoints import ModelInfo
from deeplab_geo.config import PipelineConfig, TTASettings
from deeplab_geo.errors import ConfigError, InputError
from deeplab_geo.pipeline import tta
from deeplab_geo.plugins import load_model
from deeplab_geo.raster import io, resample, tiling
from deeplab_geo.raster.stitch import CLASS_NODATA, CONFIDENCE_NODATA, TileCore, confidence_percent

log = logging.getLogger(__name__)

_FORWARD_LOCK = threading.Lock()
"""One forward pass at a time in a process: a backend already uses every core (or the GPU),
and two passes at once would hold two batches' activations."""

_SAME = 1e-3  # resolutions closer than this (relative) are the same


_FALLBACK_OVERLAP = 64  # model pixels, for models that record neither reach nor overlap


@dataclass(frozen=True)
class WindowPlan:
    """The geometry of a run.

    Attributes:
        tile, overlap: tile size and overlap on the raster's grid (pixels).
        model_tile: the tile's size at the model's resolution (what the model sees).
        batch_size: tiles per forward pass.
        raster_m, model_m: pixel size of the raster and of the model on the ground (metres;
            ``model_m`` is ``raster_m`` when the model runs at the raster's resolution).
        source: where the model's resolution came from.
        align: tiles start at multiples of this many raster pixels (see
        :mod:`~deeplab_geo.raster.tiling`).
        overlap_source: where the overlap came from.
        fit: tiles shrink to fit the raster (:func:`~deeplab_geo.raster.tiling.axis_spans`);
            false for models with a fixed input size, which would pad them back.
    """

    tile: int
    overlap: int
    model_tile: int
    batch_size: int
    raster_m: float | None
    model_m: float | None
    source: str
    align: int = 1
    overlap_source: str = "tiling.overlap"
    fit: bool = False

    @property
    def scale(self) -> float:
        """Model pixels per raster pixel along each axis (1: no resampling)."""
        return self.model_tile / self.tile

    def model_shape(self, height: int, width: int) -> tuple[int, int]:
        """The size at the model's resolution of a window of ``height`` x ``width`` px."""
        if self.scale == 1:
            return height, width
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def spans(self, length: int) -> list[tuple[tiling.Span, tiling.Span]]:
        """The (tile, core) spans of one axis of ``length`` pixels."""
        return tiling.axis_spans(length, self.tile, self.overlap, self.align, self.fit)

    def grid(self, height: int, width: int) -> list[tiling.Tile]:
        """The tiles of a ``height`` x ``width`` raster."""
        return tiling.tile_grid(height, width, self.tile, self.overlap, self.align, self.fit)

    def report(self) -> dict[str, Any]:
        return {"raster_m_per_px": self.raster_m, "model_m_per_px": self.model_m,
                "source": self.source, "model_px_per_raster_px": round(self.scale, 6),
                "tile_px": self.tile, "overlap_px": self.overlap,
                "overlap_source": self.overlap_source, "align_px": self.align,
                "fitted_tiles": self.fit,
                "model_tile_px": self.model_tile, "batch_size": self.batch_size}


def plan_windows(config: PipelineConfig, info: ModelInfo, ds: rasterio.DatasetReader
                 ) -> WindowPlan:
    """The run's geometry (see :class:`WindowPlan`).

    A model with a fixed input size or batch sets them; a pipeline that asks for others
    explicitly is refused. ``tiling.overlap: auto`` takes the model's own overlap: a zoo
    model's ``tiles_overlap``, or twice the reach a deeplab-geo model records (then a tile too
    small to keep a core as wide as the overlap grows to twice the overlap, with a warning if
    the pipeline set ``tile_size``). An explicit overlap below twice the reach logs a warning
    that names the reach. Where the model runs at the raster's resolution, tiles start at
    multiples of its alignment (:attr:`ModelInfo.alignment`). The resolution follows
    :func:`model_resolution`; a raster that is upsampled logs a warning.

    Raises:
        ConfigError: a tile size or batch size the model cannot take.
        InputError: a raster far coarser than the model (see :func:`model_resolution`).
    """
    tile_size, batch_size, overlap, overlap_source, note = _sizes(config, info)
    raster_m, model_m, source = model_resolution(config, info, ds)
    if note is not None:
        log.log(*note)
    scale = raster_m / model_m if raster_m and model_m else 1.0
    fit = info.input_size is None
    if abs(scale - 1) < _SAME:
        return WindowPlan(tile_size, overlap, tile_size, batch_size, raster_m, model_m, source,
                          info.alignment, overlap_source, fit)
    if scale > 1:
        log.warning("%s: its pixels (%s) are %.3gx coarser than the model's (%s): upsampled to "
                    "%s px (%s)", _name(ds), metres_text(raster_m), scale, metres_text(model_m),
                    _size(ds.width * scale, ds.height * scale),
                    f"model.max_upsample: {config.model.max_upsample:g}"
                    if source == "model metadata" else source)
    tile = max(1, round(tile_size / scale))
    raster_overlap = min(tile - 1, round(overlap / scale))
    return WindowPlan(tile, raster_overlap, tile_size, batch_size, raster_m, model_m, source,
                      1, overlap_source, fit)


def model_resolution(config: PipelineConfig, info: ModelInfo, ds: Any
                     ) -> tuple[float | None, float | None, str]:
    """The raster's and the model's pixel size on the ground (metres), and where the model's
    came from.

    The rule (``model.resolution``): ``native`` runs at the raster's resolution, and so does
    ``auto`` for a model that declares none or a raster without a CRS; ``auto`` otherwise takes
    the model's declared resolution, and a number sets it. Rasters in a geographic CRS are
    measured in metres at their centre (:func:`~deeplab_geo.raster.io.ground_pixel_size_m`).

    Raises:
        InputError: with ``auto``, a raster coarser than the model by more than
            ``model.max_upsample``: the message names both resolutions, the factor, the size
            and tile count the job would have, and the ways out. Only the raster's header is
            read.
    """
    raster_m = io.ground_pixel_size_m(ds) if ds.crs is not None else None
    setting = config.model.resolution
    if setting == "native" or (setting == "auto" and info.resolution is None) \
            or raster_m is None:
        return raster_m, raster_m, "raster (native)"
    if setting != "auto":
        return raster_m, float(setting), "model.resolution"
    model_m = float(info.resolution)
    factor = raster_m / model_m
    limit = config.model.max_upsample
    if factor > limit * (1 + _SAME):
        tile_size, _, overlap, _, _ = _sizes(config, info)
        height, width = round(ds.height * factor), round(ds.width * factor)
        fit = info.input_size is None
        tiles = len(tiling.axis_spans(height, tile_size, overlap, 1, fit)) \
            * len(tiling.axis_spans(width, tile_size, overlap, 1, fit))
        raise InputError(
            f"{_name(ds)}: pixels of {metres_text(raster_m)}, {factor:,.3g}x coarser than the "
            f"model's {metres_text(model_m)} (model.max_upsample: {limit:g}): the job would grow "
            f"to {_size(width, height)} px, {tiles:,} tiles; set model.resolution: native (or "
            f"<m/px>), or use a model made for about {metres_text(raster_m)}")
    return raster_m, model_m, "model metadata"


def _name(ds: Any) -> str:
    return PurePath(str(ds.name)).name


def metres_text(value: float | None) -> str:
    """A ground distance for messages: ``5 cm``, ``0.5 m``, ``300 m``, ``1.2 km``."""
    if value is None:
        return "unknown"
    if value < 0.1:
        return f"{value * 100:.3g} cm"
    return f"{value:.3g} m" if value < 1000 else f"{value / 1000:,.3g} km"


def _size(width: float, height: float) -> str:
    return f"{round(width):,} x {round(height):,}"


def _sizes(config: PipelineConfig, info: ModelInfo
           ) -> tuple[int, int, int, str, tuple[int, str, Any] | None]:
    """Tile size, batch size, overlap (model pixels), where the overlap came from, and a note
    to log (or ``None``)."""
    asked = config.tiling.model_fields_set
    tile_size, batch_size = config.tiling.tile_size, config.model.batch_size
    if info.input_size is not None:
        if "tile_size" in asked and tile_size != info.input_size:
            raise ConfigError(f"tiling.tile_size {tile_size}: the model takes only "
                              f"{info.input_size} px tiles; leave tile_size out")
        tile_size = info.input_size
    if info.batch_size is not None:
        if "batch_size" in config.model.model_fields_set and batch_size != info.batch_size:
            raise ConfigError(f"model.batch_size {batch_size}: the model takes batches of "
                              f"{info.batch_size} only; leave batch_size out")
        batch_size = info.batch_size
    tile_size, overlap, overlap_source, note = _tile_and_overlap(config, info, tile_size)
    return tile_size, batch_size, overlap, overlap_source, note


def _tile_and_overlap(config: PipelineConfig, info: ModelInfo, tile_size: int
                      ) -> tuple[int, int, str, tuple[int, str, Any] | None]:
    """Tile size and overlap at the model's resolution, where the overlap came from, and a
    note to log (``(level, message, *args)``) or ``None``."""
    asked = config.tiling.model_fields_set
    overlap = config.tiling.overlap
    if overlap != "auto":
        note = None
        if info.reach and overlap < 2 * info.reach:
            note = (logging.WARNING,
                    "tiling.overlap %d is below the model's reach: it looks %d px around "
                    "each pixel, so pixels nearer a tile's edge than that may differ from a "
                    "whole-image prediction; use overlap: auto (%d px)",
                    overlap, info.reach, 2 * info.reach)
        if overlap >= tile_size:  # a model with a fixed, smaller input
            raise ConfigError(f"tiling.overlap {overlap}: the model's tiles are {tile_size} px; "
                              "give a smaller overlap")
        return tile_size, overlap, "tiling.overlap", note
    if info.overlap is not None:
        overlap, source = info.overlap, "the model's own (tiles_overlap)"
        if overlap >= tile_size:
            overlap = tile_size // 8
    elif info.reach is not None:
        overlap, source = 2 * info.reach, f"twice the model's reach ({info.reach} px)"
    else:
        overlap, source = _FALLBACK_OVERLAP, "default (the model records no reach)"
    if tile_size - overlap < overlap:
        if info.input_size is not None:
            return tile_size, min(overlap, tile_size // 2), source, None
        grown = -(-2 * overlap // 32) * 32
        note = (logging.WARNING if "tile_size" in asked else logging.DEBUG,
                "tiling.tile_size %d cannot hold the model's overlap of %d px and a core as "
                "wide; tiles of %d px are used (give tiling.overlap to keep %d px tiles)",
                tile_size, overlap, grown, tile_size)
        return grown, overlap, source, note
    return tile_size, overlap, source, None


@dataclass(frozen=True)
class WindowSettings:
    """What is done to every window, wherever its pixels come from (small and picklable).

    The file pipeline and the xarray accessor both build one and hand it, with the windows'
    pixels, to :func:`process_windows`, so the two paths cannot drift apart.
    """

    backend: str
    checkpoint: str
    device: str
    tta: TTASettings
    crf: crf_module.CRFParams | None
    plan: WindowPlan
    colours: crf_module.ColourMapping | None = None
    crf_processes: int = 1
    confidence: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"


@dataclass(frozen=True)
class TileJob:
    """A batch of tiles of a raster file to process (small and picklable)."""

    raster: str
    tiles: list[tiling.Tile]
    settings: WindowSettings
    gdal: dict[str, Any] = field(default_factory=dict)  # options to read the raster with


def crf_params(config: PipelineConfig, plan: WindowPlan, ds: Any) -> crf_module.CRFParams | None:
    """The pipeline's CRF parameters in model pixels (the CRF works at the model's resolution),
    or ``None`` with the CRF off. ``ds`` is a raster (or :class:`deeplab_geo.raster.io.Grid`)."""
    if not config.crf.enabled:
        return None
    metres = config.crf.spatial_units == "metres"
    return config.crf.params(plan.model_m or io.pixel_size_m(ds) if metres else None)


def window_settings(config: PipelineConfig, plan: WindowPlan,
                    crf: tuple[crf_module.CRFParams, crf_module.ColourMapping | None] | None
                    ) -> WindowSettings:
    """The :class:`WindowSettings` of a pipeline (``crf``: parameters in pixels and colours)."""
    settings, colours = crf if crf is not None else (None, None)
    return WindowSettings(config.model.backend, str(config.model.checkpoint),
                          config.model.device, config.tta, settings, plan, colours,
                          config.execution.crf_processes, config.outputs.confidence,
                          config.model.metadata, config.model.precision)


Read = tuple["np.ndarray | None", np.ndarray]
"""A window's pixels ``(bands, h, w)`` (``None``: its core holds no valid pixel) and its
validity mask ``(h, w)``."""


def process_batch(job: TileJob, readers: io.ThreadReaders | None = None) -> list[TileCore]:
    """Read a batch of tiles from the raster file and process them (:func:`process_windows`).

    With ``readers``, the raster stays open in this thread for the batches after this one
    (see :class:`~deeplab_geo.raster.io.ThreadReaders`); without, it is opened for this batch.
    """
    with rasterio.Env(**job.gdal):
        if readers is not None:
            reads = _read_tiles(readers.get(job.raster), job.tiles)
        else:
            with rasterio.open(job.raster) as ds:
                reads = _read_tiles(ds, job.tiles)
    return process_windows(job.settings, job.tiles, reads)


def _read_tiles(ds: rasterio.DatasetReader, tiles: list[tiling.Tile]) -> list[Read]:
    return [io.read_window(ds, tile.read_window, tile.core_slices) for tile in tiles]


def array_window(data: np.ndarray, nodata: float | None, needed: tuple[slice, slice]) -> Read:
    """The :data:`Read` of a window held in memory (``data``: ``(bands, h, w)``), with the rule
    of :func:`deeplab_geo.raster.io.read_window`: a pixel is valid where no band holds ``nodata``
    (NaN counts as nodata for float data)."""
    valid = np.ones(data.shape[-2:], bool)
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).any(0)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        valid &= ~(data == data.dtype.type(nodata)).any(0)
    if not valid[needed].any():
        return None, valid
    return data, valid


def process_windows(settings: WindowSettings, tiles: list[tiling.Tile], reads: list[Read]
                    ) -> list[TileCore]:
    """Predict (and refine) windows of one size; returns each tile's core classes and confidence.

    ``reads`` hold each tile's read window (see :data:`Read`). Tiles whose cores hold no valid
    pixel come back as ``None``; other nodata pixels come out as class ``CLASS_NODATA`` with
    confidence ``CONFIDENCE_NODATA``.
    """
    todo = [i for i, (data, _) in enumerate(reads) if data is not None]
    if not todo:
        return [None] * len(tiles)
    predictor = load_model(settings.backend, settings.checkpoint, settings.device,
                           settings.metadata, precision=settings.precision)
    plan = settings.plan
    images = {i: _to_model(plan, io.blank_nodata(*reads[i])) for i in todo}
    batch = _pad_to(np.stack([images[i] for i in todo]), plan.align)
    with _FORWARD_LOCK:
        out = tta.predict(predictor, batch, settings.tta.scales, settings.tta.flip,
                          settings.tta.fusion)
    height, width = images[todo[0]].shape[-2:]
    probs = dict(zip(todo, out[..., :height, :width]))
    del batch, out
    if settings.crf is not None:
        pairs = [(probs[i], crf_module.colour_features(images[i], settings.colours),
                  _mask_to_model(plan, reads[i][1])) for i in todo]
        probs = dict(zip(todo, crf_module.refine_many(pairs, settings.crf,
                                                      settings.crf_processes)))
    cores: list[TileCore] = []
    for i, (tile, (_, valid)) in enumerate(zip(tiles, reads)):
        if i not in probs:
            cores.append(None)
            continue
        rows, cols = tile.core_slices
        nodata = ~valid[rows, cols]
        classes, top = best_class(_to_raster(plan, probs.pop(i), valid.shape)[:, rows, cols])
        classes[nodata] = CLASS_NODATA
        confidence = None
        if settings.confidence:
            confidence = confidence_percent(top)
            confidence[nodata] = CONFIDENCE_NODATA
        cores.append((classes, confidence))
    return cores


def best_class(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most probable class (uint8; the lowest on ties, as ``argmax``) and its probability,
    of ``(classes, h, w)`` probabilities.

    The same as ``argmax(0)`` and ``take_along_axis``, in a few passes over contiguous rows
    (about 4x as fast on a tile's core, a strided view of 6 classes).
    """
    top = probabilities.max(0)
    best = np.zeros(top.shape, np.uint8)
    same = np.empty(top.shape, bool)
    for k in range(len(probabilities) - 1, -1, -1):  # the lowest of equal ones last
        np.equal(probabilities[k], top, out=same)
        np.copyto(best, k, where=same)
    return best, top


def _pad_to(batch: np.ndarray, align: int) -> np.ndarray:
    """A batch padded at its bottom and right, by repeating the edge, to multiples of ``align``.

    Tiles start at multiples of ``align`` (:mod:`deeplab_geo.raster.tiling`); padding each to a
    multiple too puts every one, the cut-off last tiles included, on the same grid of strides
    and pooling cells as the whole raster padded once, so a model sees the same padding at the
    raster's far edges whichever tile holds them.
    """
    height, width = batch.shape[-2:]
    pad = (-height % align, -width % align)
    if align == 1 or pad == (0, 0):
        return batch
    return np.pad(batch, [(0, 0)] * (batch.ndim - 2) + [(0, pad[0]), (0, pad[1])], mode="edge")


def _to_model(plan: WindowPlan, data: np.ndarray) -> np.ndarray:
    """A window's pixels at the model's resolution (as read where that is the raster's)."""
    shape = plan.model_shape(*data.shape[-2:])
    return data if shape == data.shape[-2:] else resample.resize(data, shape)


def _mask_to_model(plan: WindowPlan, valid: np.ndarray) -> np.ndarray:
    shape = plan.model_shape(*valid.shape)
    return valid if shape == valid.shape else resample.resize_mask(valid, shape)


def _to_raster(plan: WindowPlan, probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probabilities of a window back on the raster's grid."""
    return probs if probs.shape[-2:] == tuple(shape) else resample.resize(probs, shape)

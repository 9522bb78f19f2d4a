"""The plan of a run, made before any output is written: what the model will see, how many tiles,
how much memory, disk and time it should take.

:func:`make_plan` states, for one raster and pipeline: the input size, both resolutions and the
factor between them, the pixels the model will see, the tiles (and those holding data, where a
cheap look at the raster's mask tells), the expected peak memory of the whole process tree, the
outputs' size beside the output folder's free space, and the expected duration. Every run makes
one first (``run.json`` keeps it under ``plan``; the CLI prints its :meth:`RunPlan.text` as its
first line) and ``deeplab-geo plan`` makes one without running.

Durations and memory come from measurements on this machine (:class:`Speed`): the model's
forward pass on a batch of one real tile of the raster, and the dense CRF on a crop of it,
each timed and its memory high-water mark taken (``/proc/self/clear_refs``). A finished run
replaces the timings with what it really took, so the next plan of the same settings uses
them. Both are kept in ``speed.json`` in the cache folder (``$DEEPLAB_GEO_CACHE``, see
:func:`deeplab_geo.tools.export.cache_dir`), keyed by everything that sets the speed (see
:func:`speed_key`): the settings and model files that decide the outputs, threads,
processes, tile and batch size, and this machine's CPU count.

The memory estimate is the sum of what a run holds at its busiest (see :func:`_memory_mb`):
this process once the model is loaded, the forward pass's activations, the batches in flight,
the full-width strips being assembled, GDAL's block cache, and each CRF helper process with one
tile's lattice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from deeplab_geo import crf as crf_module
from deeplab_geo.config import PipelineConfig
from deeplab_geo.errors import OutputError
from deeplab_geo.files import write_atomic
from deeplab_geo.pipeline import tta
from deeplab_geo.pipeline.fingerprint import config_hash
from deeplab_geo.pipeline.windows import (
    WindowPlan,
    _mask_to_model,
    _to_model,
    metres_text,
)
from deeplab_geo.raster import io, tiling

log = logging.getLogger(__name__)

SPEED_FILE = "speed.json"
_SPEED_FORMAT = "deeplab-geo-speed/1"
_PROBE_CROP = 512  # model pixels: the CRF is measured on a crop this size of one tile
_CRF_GROWTH = 0.18  # the CRF's time per pixel grows as (pixels)^0.18 (natural images, 256-1024 px)
_RUN_OVERHEAD = 1.3  # a run's reads, resampling, hand-overs and writes beside the probe's work
_MASK_SIDE = 1024  # the raster's mask is looked at decimated to this many pixels at most
_MASK_LIMIT = 16384  # rasters larger than this (px, each side) without overviews: not looked at
_FINISH_S_PER_MPX = 0.05  # COGs, polygons and quicklook per raster Mpx, until a run measures it
_HELPER_BASE_MB = 70  # a CRF helper process with pydensecrf loaded
_STRIP_BYTES_PER_PX = 3  # class, confidence and the polygon stage's labels, per strip pixel
_BLOCK = 512
_MB = 2**20


@dataclass(frozen=True)
class Speed:
    """What a run of these settings costs on this machine.

    Attributes:
        predict_s_per_mpx: seconds of the predict-and-refine stage per million model pixels of
            tiles that hold data.
        finish_s_per_mpx: seconds of the rest (COGs, polygons, quicklook) per million raster
            pixels that hold data.
        tile_s: seconds every tile costs, with data or without (reading it, its mask).
        forward_bytes_per_px: memory a forward pass takes beyond its input, per model pixel.
        crf_bytes_per_px: memory the dense CRF takes per model pixel (0 without it).
        source: how the timings were obtained.
    """

    predict_s_per_mpx: float
    finish_s_per_mpx: float
    tile_s: float
    forward_bytes_per_px: float
    crf_bytes_per_px: float
    source: str


@dataclass(frozen=True)
class RunPlan:
    """What a run will do and cost (see the module docstring); all sizes in pixels, MB or s."""

    input: str
    width: int
    height: int
    raster_m: float | None
    model_m: float | None
    resolution_source: str
    model_width: int
    model_height: int
    tile: int
    overlap: int
    tile_shape: tuple[int, int]
    """The largest tile's height and width at the model's resolution."""
    tiles: int
    tiles_with_data: int | None
    model_pixels: int
    nodata_share: float | None
    memory_mb: int
    output_mb: int
    free_mb: int | None
    seconds: float
    speed_source: str

    factor: float


    def text(self) -> str:
        """The plan in one line, e.g. ``Plan: orthophoto.tif 2,048 x 2,048 px at 0.5 m, ...``."""
        parts = [f"Plan: {self.input} {self.width:,} x {self.height:,} px"]
        if self.raster_m is not None:
            parts[0] += f" at {metres_text(self.raster_m)}"
        if abs(self.factor - 1) > 1e-3:
            parts.append(f"resampled x{self.factor:.3g} to the model's {metres_text(self.model_m)} "
                         f"({self.model_width:,} x {self.model_height:,} px)")
        elif self.model_m is not None:
            whose = {"model metadata": "its own", "raster (native)": "the raster's"}
            parts.append(f"model at {metres_text(self.model_m)} "
                         f"({whose.get(self.resolution_source, self.resolution_source)})")
        overlap = round(self.overlap * self.factor)
        height, width = self.tile_shape
        size = f"{width:,}" if height == width else f"{width:,} x {height:,}"
        tiles = f"{self.tiles:,} tile{'s' if self.tiles != 1 else ''} of {size} px, " \
                f"overlap {overlap:,}"
        if self.tiles_with_data is not None and self.tiles_with_data != self.tiles:
            tiles += f" ({self.tiles_with_data:,} with data)"
        parts.append(tiles)
        parts.append(f"{self.model_pixels / 1e6:,.1f} Mpx to predict")
        if self.nodata_share is not None:
            parts.append(f"nodata {self.nodata_share:.0%}")
        parts.append(f"peak memory about {_megabytes(self.memory_mb)}")
        outputs = f"outputs about {_megabytes(self.output_mb)}"
        if self.free_mb is not None:
            outputs += f" ({_megabytes(self.free_mb)} free)"
        parts.append(outputs)
        parts.append(f"about {_duration(self.seconds)} ({self.speed_source})")
        return ", ".join(parts)

    def report(self) -> dict[str, Any]:
        """The plan as plain JSON values (``run.json``'s ``plan``)."""
        values = asdict(self)
        values["seconds"] = round(self.seconds, 1)
        if self.nodata_share is not None:
            values["nodata_share"] = round(self.nodata_share, 4)
        return values


def make_plan(config: PipelineConfig, predictor: Any, ds: rasterio.DatasetReader,
              plan: WindowPlan, grid: list[tiling.Tile], crf: Any = None, *,
              resident: int | None = None, remeasure: bool = False) -> RunPlan:
    """The plan of running ``config`` on ``ds`` (open) with ``predictor`` (loaded).

    Args:
        plan, grid: the run's geometry (:func:`~deeplab_geo.pipeline.windows.plan_windows`).
        crf: ``(params, colours)`` of the dense CRF, or ``None`` without it.
        resident: this process's memory with the model loaded, as a run has it (see
            :class:`Footprint`); by default as it is now.
        remeasure: measure the speed now even where this machine has measured it before.

    Reads a decimated mask of the raster where that is cheap, and one tile (the speed probe)
    where this machine has not measured these settings yet. Writes nothing but the cache.
    """
    largest = max(grid, key=lambda t: t.row.size * t.col.size)
    tile_h, tile_w = plan.model_shape(largest.row.size, largest.col.size)
    key = speed_key(config, plan, (tile_h, tile_w))
    if resident is None:
        resident = _rss()  # before a probe, whose buffers ONNX Runtime's arena may keep
    valid = _valid_mask(ds)
    speed = None if remeasure else cached_speed(key)
    if speed is None:
        speed = measure_speed(config, predictor, ds, plan, grid, crf, valid)
        record_speed(key, speed)
    with_data = _tiles_with_data(grid, valid, ds.height, ds.width)
    model_pixels = sum(np.prod(plan.model_shape(t.row.size, t.col.size))
                       for t in (grid if with_data is None else with_data))
    nodata = None if valid is None else 1.0 - float(valid.mean())
    raster_mpx = ds.width * ds.height / 1e6
    seconds = model_pixels / 1e6 * speed.predict_s_per_mpx + len(grid) * speed.tile_s \
        + raster_mpx * (1 - (nodata or 0)) * speed.finish_s_per_mpx
    model_h, model_w = plan.model_shape(ds.height, ds.width)
    free = _free_mb(config.output_dir)
    return RunPlan(
        input=Path(str(ds.name)).name, width=ds.width, height=ds.height, raster_m=plan.raster_m,
        model_m=plan.model_m, resolution_source=plan.source, model_width=model_w,
        model_height=model_h, tile=plan.tile, overlap=plan.overlap,
        tile_shape=(tile_h, tile_w),
        tiles=len(grid), tiles_with_data=None if with_data is None else len(with_data),
        model_pixels=int(model_pixels), nodata_share=nodata,
        memory_mb=_memory_mb(config, predictor, ds, plan, speed, largest, resident,
                             1 - (nodata or 0)),
        output_mb=_output_mb(config, ds.width * ds.height * (1 - (nodata or 0))),
        free_mb=free, seconds=seconds, speed_source=speed.source, factor=plan.scale)


def check_disk(run_plan: RunPlan, output_dir: Path) -> None:
    """Refuse a run whose outputs cannot fit the output folder's free space.

    Raises:
        OutputError: the estimated outputs exceed the free space (one line naming both).
    """
    if run_plan.free_mb is not None and run_plan.output_mb > run_plan.free_mb:
        raise OutputError(
            f"{output_dir}: the outputs of {run_plan.input} need about "
            f"{_megabytes(run_plan.output_mb)} and the disk has {_megabytes(run_plan.free_mb)} "
            "free; free some space or choose another output_dir")


# --- speed: measured on this machine, kept in the cache -------------------------------------

def speed_key(config: PipelineConfig, plan: WindowPlan, tile: tuple[int, int]) -> str:
    """A hash of everything that sets a run's speed (see the module docstring): what decides
    its outputs (:func:`~deeplab_geo.pipeline.fingerprint.config_hash`: settings, model files,
    version), how it executes, the batch size, ``tile`` (the largest tile's size at the
    model's resolution) and this machine's CPU count."""
    settings = {"outputs": config_hash(config), "tile": list(tile), "batch": plan.batch_size,
                "execution": config.execution.model_dump(mode="json"),
                "cluster": config.cluster.model_dump(mode="json"), "cpus": os.cpu_count()}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _speed_file() -> Path:
    from deeplab_geo.tools.export import cache_dir

    return cache_dir() / SPEED_FILE


def _read_speeds() -> dict[str, Any]:
    try:
        data = json.loads(_speed_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _SPEED_FORMAT:
        return {}
    return data.get("speeds", {}) if isinstance(data.get("speeds"), dict) else {}


def cached_speed(key: str) -> Speed | None:
    """The speed this machine recorded for ``key``, or ``None``."""
    entry = _read_speeds().get(key)
    try:
        return Speed(**entry) if isinstance(entry, dict) else None
    except TypeError:
        return None


def record_speed(key: str, speed: Speed) -> None:
    """Keep ``speed`` for ``key`` in the cache; a cache that cannot be written is skipped."""
    speeds = _read_speeds()
    speeds[key] = asdict(speed)
    try:
        path = _speed_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"format": _SPEED_FORMAT, "speeds": speeds}, indent=1))
    except OSError as exc:
        log.debug("speed cache not written: %s", exc)


def record_run(config: PipelineConfig, plan: WindowPlan, run_plan: RunPlan,
               timings: dict[str, float]) -> None:
    """Replace the timings of ``run_plan``'s settings by what the run took (the memory
    figures stay as measured)."""
    key = speed_key(config, plan, run_plan.tile_shape)
    measured = cached_speed(key)
    if measured is None or run_plan.model_pixels == 0:
        return
    raster_mpx = run_plan.width * run_plan.height / 1e6 * (1 - (run_plan.nodata_share or 0))
    finish = sum(v for k, v in timings.items() if k in ("write_cog", "vectorize", "quicklook"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    predict = timings.get("predict_and_refine", 0.0) - run_plan.tiles * measured.tile_s
    record_speed(key, Speed(
        predict_s_per_mpx=max(predict, 0.0) / (run_plan.model_pixels / 1e6),
        finish_s_per_mpx=finish / raster_mpx if raster_mpx > 0 else measured.finish_s_per_mpx,
        tile_s=measured.tile_s,
        forward_bytes_per_px=measured.forward_bytes_per_px,
        crf_bytes_per_px=measured.crf_bytes_per_px,
        source=f"the last run of these settings here, {when}"))


def measure_speed(config: PipelineConfig, predictor: Any, ds: rasterio.DatasetReader,
                  plan: WindowPlan, grid: list[tiling.Tile], crf: Any = None,
                  valid: np.ndarray | None = None) -> Speed:
    """Time the model on a batch of one tile of ``ds`` that holds data (repeated), and the
    dense CRF on a crop of it, and take the memory each needs (see the module docstring).
    ``valid``: the raster's decimated mask, if known.

    Two factors measured on the demo scene (``benchmarks/plan.py``) carry the probe to a run:
    the CRF's time per pixel grows with the tile (by 1.28 each time the side doubles), and a
    run spends about 1.3 times the probe's time per pixel (reads, resampling, hand-overs and
    writes share the cores with the model and the CRF).
    """
    tile = _probe_tile(grid, valid, ds.height, ds.width)
    started = time.perf_counter()
    data, valid = io.read_window(ds, tile.read_window)
    tile_s = time.perf_counter() - started
    if data is None:  # nothing valid anywhere: the run will say so; any pixels time the same
        data = np.zeros((ds.count, tile.row.size, tile.col.size), ds.dtypes[0])
        valid = np.ones(data.shape[1:], bool)
    image = _to_model(plan, io.blank_nodata(data, valid))
    batch = np.stack([image] * plan.batch_size)
    pixels = batch.shape[0] * image.shape[-2] * image.shape[-1]
    with _PeakMemory() as forward_memory:
        started = time.perf_counter()
        out = tta.predict(predictor, batch, config.tta.scales, config.tta.flip,
                          config.tta.fusion)
        forward_s = time.perf_counter() - started
    probs = out[0]
    forward_bytes = max(0, forward_memory.peak - out.nbytes) / pixels
    del batch, out
    crf_s_per_px, crf_bytes = 0.0, 0.0
    if crf is not None:
        params, colours = crf
        rows, cols = _centre(probs.shape[-2], _PROBE_CROP), _centre(probs.shape[-1], _PROBE_CROP)
        crop = np.ascontiguousarray(probs[:, rows, cols])
        features = crf_module.colour_features(image[:, rows, cols], colours)
        mask = _mask_to_model(plan, valid)[rows, cols]
        with _PeakMemory() as crf_memory:
            started = time.perf_counter()
            crf_module.refine(crop, features, params, mask)
            crf_s = time.perf_counter() - started
        crop_px = crop.shape[-2] * crop.shape[-1]
        crf_s_per_px = crf_s / crop_px * (probs[0].size / crop_px) ** _CRF_GROWTH
        crf_bytes = crf_memory.peak / crop_px
    cores = os.cpu_count() or 1
    crf_parallel = 1 if config.crf.refiner == "torch" else \
        max(1, min(config.execution.crf_processes, cores))
    predict = (forward_s / pixels + crf_s_per_px / crf_parallel) * _RUN_OVERHEAD
    return Speed(predict_s_per_mpx=predict * 1e6, finish_s_per_mpx=_FINISH_S_PER_MPX,
                 tile_s=tile_s, forward_bytes_per_px=forward_bytes, crf_bytes_per_px=crf_bytes,
                 source="measured on one batch")


def _probe_tile(grid: list[tiling.Tile], valid: np.ndarray | None, height: int, width: int
                ) -> tiling.Tile:
    """Of the largest tiles, the first whose core holds data in the raster's decimated mask."""
    largest = max(t.row.size * t.col.size for t in grid)
    candidates = [t for t in grid if t.row.size * t.col.size == largest]
    if valid is None:
        return candidates[0]
    for tile in candidates:
        if _has_data(valid, tile, height, width):
            return tile
    return candidates[0]


def _centre(length: int, size: int) -> slice:
    start = max(0, (length - size) // 2)
    return slice(start, min(length, start + size))


class Footprint:
    """This process's memory with the model loaded, as a run that loads it has it: made before
    the model loads, asked after.

    The first load of a deeplab-geo checkpoint on a backend other than torch exports it to
    ONNX, which brings torch into this process; runs after it find the export in the cache
    and never import torch. After such a load the model counts as twice its weights file (the
    session's copy and its working memory) instead of what this process holds.
    """

    def __init__(self) -> None:
        self._before = _rss()
        self._torch = "torch" in sys.modules

    def resident(self, backend: str, weights: Path) -> int:
        if backend == "torch" or self._torch or "torch" not in sys.modules:
            return _rss()
        try:
            size = Path(weights).stat().st_size
        except OSError:
            size = 0
        return self._before + 2 * size + 32 * _MB


class _PeakMemory:
    """The peak resident memory of this process within a block, above its level at the start
    (Linux: ``/proc/self/clear_refs`` resets the high-water mark; elsewhere a sampling thread).

    The reset is process-wide: ``getrusage``'s ``ru_maxrss`` of a run then counts from its
    plan's probe on (benchmarks sample the process tree's memory instead).
    """

    def __enter__(self) -> _PeakMemory:
        self.peak = 0
        self._start = _rss()
        self._exact = _reset_peak()
        self._stop = threading.Event()
        self._sampled = self._start
        if not self._exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._exact:
            high = _status_kb("VmHWM") * 1024
        else:
            self._thread.join()
            high = self._sampled
        self.peak = max(0, high - self._start)


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    kb = _status_kb("VmRSS")
    if kb:
        return kb * 1024
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


# --- the raster's mask: which tiles hold data ------------------------------------------------

def _valid_mask(ds: rasterio.DatasetReader) -> np.ndarray | None:
    """A decimated validity mask of the raster, or ``None`` where every pixel is valid by
    declaration (no nodata, no mask) or where looking costs too much (larger than
    16,384 px without overviews, unless a VRT)."""
    flags = ds.mask_flag_enums[0] if ds.count else ()
    if all(flag == rasterio.enums.MaskFlags.all_valid for flag in flags) \
            and not ds.dtypes[0].startswith("float"):
        return None
    if max(ds.width, ds.height) > _MASK_LIMIT and not ds.overviews(1) and ds.driver != "VRT":
        return None  # a VRT reads only the sources a decimated read touches
    scale = min(1.0, _MASK_SIDE / max(ds.width, ds.height))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    try:
        mask = ds.dataset_mask(out_shape=shape) > 0
        if ds.dtypes[0].startswith("float"):
            mask &= ~np.isnan(ds.read(out_shape=(ds.count, *shape))).any(0)
    except rasterio.errors.RasterioError:
        return None
    return mask


def _has_data(valid: np.ndarray, tile: tiling.Tile, height: int, width: int) -> bool:
    rows = _scaled(tile.core_row, height, valid.shape[0])
    cols = _scaled(tile.core_col, width, valid.shape[1])
    return bool(valid[rows, cols].any())


def _scaled(span: tiling.Span, length: int, cells: int) -> slice:
    start = min(cells - 1, span.start * cells // length)
    return slice(start, max(start + 1, -(-span.stop * cells // length)))


def _tiles_with_data(grid: list[tiling.Tile], valid: np.ndarray | None, height: int,
                     width: int) -> list[tiling.Tile] | None:
    if valid is None:
        return None
    return [tile for tile in grid if _has_data(valid, tile, height, width)]


# --- memory and disk ------------------------------------------------------------------------

def _memory_mb(config: PipelineConfig, predictor: Any, ds: rasterio.DatasetReader,
               plan: WindowPlan, speed: Speed, largest: tiling.Tile, resident: int,
               data_share: float) -> int:
    """The expected peak resident memory of the run's process tree, in MB.

    ``resident``: this process before any probe (libraries and the model loaded); plus one
    forward pass's activations for a batch; the batch being predicted (its pixels at the
    model's resolution as float32 and its probabilities, twice: before and after resampling;
    forward passes run one at a time);
    the finished cores of the batches in flight; the full-width strips being assembled and
    traced (a tile's height and two blocks); GDAL's block cache (as far as the data fills
    it); and
    each CRF helper process with one tile's lattice.
    """
    tile_h, tile_w = plan.model_shape(largest.row.size, largest.col.size)
    tile_px = tile_h * tile_w
    classes = len(predictor.info.classes)
    workers = config.execution.workers
    batch_px = plan.batch_size * tile_px
    total = resident + speed.forward_bytes_per_px * batch_px
    total += batch_px * 4 * (ds.count + 2 * classes)
    total += config.execution.batches_in_flight(workers) * plan.batch_size * largest.row.size \
        * largest.col.size * 2
    total += ds.width * (largest.row.size + 2 * _BLOCK) * _STRIP_BYTES_PER_PX
    raster_bytes = ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize
    total += min(config.execution.gdal_cache_mb * _MB, raster_bytes * data_share)
    if config.crf.enabled and config.crf.refiner == "pydensecrf":
        helpers = config.execution.crf_processes if config.cluster.local_workers is None else 0
        total += helpers * (_HELPER_BASE_MB * _MB + speed.crf_bytes_per_px * tile_px)
    elif config.crf.enabled:
        total += speed.crf_bytes_per_px * tile_px
    return round(total / _MB)


def _output_mb(config: PipelineConfig, valid_pixels: float) -> int:
    """The outputs' size on disk, in MB, with room for the COGs' assembly (their levels are
    written first, then copied): class ids and confidence compressed, the polygons, the
    quicklook."""
    per_px = 0.1 + (0.25 if config.outputs.confidence else 0.0)
    per_px *= 2 * 4 / 3  # overview levels, and the copy into COGs
    if config.vectorize.enabled:
        per_px += 0.3
    fixed = 2 * _MB if config.quicklook else 0
    return round((valid_pixels * per_px + fixed) / _MB)


def _free_mb(folder: Path) -> int | None:
    """Free space (MB) of the disk ``folder`` is (or will be) on; ``None`` if unknown."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return round(shutil.disk_usage(path).free / _MB)
    except OSError:
        return None


def _megabytes(mb: float) -> str:
    return f"{mb:,.0f} MB" if mb < 10_000 else f"{mb / 1024:,.1f} GB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"

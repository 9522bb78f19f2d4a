"""The segmentation pipeline: raster in, class map, confidence, polygons and a report out.

Data flow (one dask graph, run by the local threaded scheduler or a dask.distributed cluster)::

    tile_grid ─► batches ─► [read windows ─► backend.predict ─► crf.refine ─► cores]
                                 │  (at most execution.in_flight batches at a time)
                                 ▼
                 StripAssembler ─► strips of whole block rows, in order
                                 ├─► ClassMapWriter: full resolution and every overview level
                                 └─► polygon stage (a thread): regions traced, GeoPackage written
    ─► COGs from the written levels ─► quicklook PNG ─► run.json

Each batch task reads its own windows and hands its tiles' cores on; a batch may start only
when the batch ``in_flight`` places before it has been handed on, so however fast prediction
is compared with writing, at most ``in_flight`` batches' results exist at a time. Strips are
written and traced as soon as every tile that covers them is done, so the COG overviews and the
polygons are made while later rows are still being predicted; what is left at the end is the
COG assembly and the last strip's polygons. Nothing scene-sized is kept in memory. All outputs
are staged and published together: a failed run leaves no output behind.
"""

from __future__ import annotations

import json
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.threaded
import numpy as np
import rasterio
from dask.callbacks import Callback

import deeplab_geo
from deeplab_geo import crf as crf_module
from deeplab_geo.checkpoints import ModelInfo, read_info, resolve
from deeplab_geo.config import PipelineConfig, updated
from deeplab_geo.errors import CheckpointError, InputError
from deeplab_geo.pipeline import cluster as cluster_module
from deeplab_geo.pipeline import planning
from deeplab_geo.pipeline.windows import (
    TileJob,
    WindowPlan,
    crf_params,
    model_resolution,
    plan_windows,
    process_batch,
    window_settings,
)
from deeplab_geo.plugins import choose_backend, load_model
from deeplab_geo.processes import bound_heap, trim_heap
from deeplab_geo.raster import io, sources, stac, tiling
from deeplab_geo.raster.quicklook import render_quicklook
from deeplab_geo.raster.stitch import (
    CLASS_NODATA,
    CONFIDENCE_SCALE,
    ClassMapWriter,
    Strip,
    StripAssembler,
    TileCore,
)
from deeplab_geo.vectorize import SUFFIXES

ProgressFactory = Callable[[int], Any]
PlanCallback = Callable[["planning.RunPlan"], None]

@dataclass
class RunResult:
    """What a run produced: final output paths and the report written to ``run.json``."""

    outputs: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)


def output_names(input_path: Path, polygon_format: str = "gpkg") -> dict[str, str]:
    """Final file names of a run, derived from the input's stem (polygons: ``vectorize.format``)."""
    stem = input_path.stem
    return {
        "classes": f"{stem}_classes.tif",
        "confidence": f"{stem}_confidence.tif",
        "polygons": f"{stem}{SUFFIXES[polygon_format]}",
        "quicklook": f"{stem}_quicklook.png",
        "report": "run.json",
        "item": f"{stem}_item.json",
    }


def run(config: PipelineConfig, *, progress: ProgressFactory | None = None,
        on_plan: PlanCallback | None = None) -> RunResult:
    """Run a pipeline end to end.

    Args:
        config: a validated pipeline (see :func:`deeplab_geo.config.load_pipeline`).
        progress: called with the number of tiles; returns an object with ``update(n)`` and
            ``close()`` (a ``tqdm`` bar, say). ``None`` shows nothing.
        on_plan: called with the run's :class:`~deeplab_geo.pipeline.planning.RunPlan` once it
            is made, before any tile is predicted (the CLI prints it).

    Raises:
        DeepLabGeoError: bad input, checkpoint, backend or output directory, a raster far
            coarser than the model, outputs larger than the free disk space, or a write that
            failed (a full disk: :class:`~deeplab_geo.errors.OutputError`); nothing is written.
    """
    bound_heap()  # tile buffers go back to the system when freed (process-wide)
    with _reading(config) as (config, origin):
        return _run(config, progress, origin, on_plan)


def plan(config: PipelineConfig, *, remeasure: bool = False) -> planning.RunPlan:
    """The plan of running ``config`` on its (one) input, without running it: what
    :func:`run` prints first (see :mod:`~deeplab_geo.pipeline.planning`).

    Args:
        remeasure: time the model and the CRF again, even where this machine has before.

    Raises:
        DeepLabGeoError: what :func:`run` would refuse before it starts (the same messages),
            outputs larger than the free disk space included.
    """
    with _reading(config) as (config, _):
        prepared = _prepare(config, remeasure)
    planning.check_disk(prepared.run_plan, config.output_dir)
    return prepared.run_plan


@contextmanager
def _reading(config: PipelineConfig) -> Iterator[tuple[PipelineConfig, sources.Origin]]:
    """GDAL's settings for the run, and the input made local (STAC Items, URLs)."""
    with rasterio.Env(GDAL_CACHEMAX=config.execution.gdal_cache_mb * 2**20,
                      **sources.gdal_options(config)), \
            sources.local_input(config) as (config, origin):
        yield config, origin


@dataclass
class _Prepared:
    """What a run knows before its first tile: the model, the geometry and the plan."""

    config: PipelineConfig
    info: ModelInfo
    profile: dict[str, Any]
    plan: WindowPlan
    grid: list[tiling.Tile]
    crf: tuple[crf_module.CRFParams, crf_module.ColourMapping] | None
    run_plan: planning.RunPlan
    load_s: float


def _prepare(config: PipelineConfig, remeasure: bool = False) -> _Prepared:
    """Load the model, check the raster against it, cut the grid and make the plan."""
    started = time.perf_counter()
    backend_name = choose_backend(config.model.backend, config.model.device)
    config = updated(config, {"model.backend": backend_name})
    with io.open_raster(config.input) as ds:
        _refuse_early(config, ds)
        footprint = planning.Footprint()
        predictor = load_model(backend_name, config.model.checkpoint, config.model.device,
                               config.model.metadata, precision=config.model.precision)
        info = predictor.info
        io.check_raster(ds, bands=info.in_channels)
        plan = plan_windows(config, info, ds)
        grid = plan.grid(ds.height, ds.width)
        crf = None
        if (params := crf_params(config, plan, ds)) is not None:
            crf = (params, crf_module.colour_mapping(ds, config.crf.bands, config.crf.stretch))
        load_s = time.perf_counter() - started
        resident = footprint.resident(backend_name, resolve(config.model.checkpoint))
        run_plan = planning.make_plan(config, predictor, ds, plan, grid, crf,
                                      resident=resident, remeasure=remeasure)
        return _Prepared(config, info, ds.profile, plan, grid, crf, run_plan, load_s)


def _run(config: PipelineConfig, progress: ProgressFactory | None,
         origin: sources.Origin, on_plan: PlanCallback | None) -> RunResult:
    started = time.perf_counter()
    prepared = _prepare(config)
    config, info, profile = prepared.config, prepared.info, prepared.profile
    plan, grid, crf, run_plan = prepared.plan, prepared.grid, prepared.crf, prepared.run_plan
    planning.check_disk(run_plan, config.output_dir)
    if on_plan is not None:
        on_plan(run_plan)
    timings = {"load": prepared.load_s,
               "plan": time.perf_counter() - started - prepared.load_s}
    names = _output_names(config)
    with io.staged_outputs(config.output_dir) as staging:
        staged = {key: staging / name for key, name in names.items()}
        counts, polygon_count = _write_maps(config, info, profile, plan, grid, crf, staged,
                                            progress, timings)
        with io.writing(config.output_dir):
            if config.quicklook:
                t0 = time.perf_counter()
                render_quicklook(config.input, staged["classes"], info.classes, info.colours,
                                 staged["quicklook"])
                timings["quicklook"] = time.perf_counter() - t0
            timings["total"] = time.perf_counter() - started
            report = _report(config, profile, grid, counts, info.classes, timings,
                             polygon_count, plan, run_plan)
            staged["report"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            item = stac.run_item(config.input.stem,
                                 {k: n for k, n in names.items() if k != "item"}, profile,
                                 info.classes, info.colours, origin)
            staged["item"].write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")
            outputs = io.publish(staged, config.output_dir)
    planning.record_run(config, plan, run_plan, timings)
    return RunResult(outputs=outputs, report=report)


def _refuse_early(config: PipelineConfig, ds: rasterio.DatasetReader) -> None:
    """Refuse a raster the model cannot take before the model loads (a first load may export
    it, which takes seconds), where its metadata can be read without loading it: a
    deeplab-geo checkpoint's JSON. ``.onnx`` models are checked once their backend has read
    them."""
    if str(config.model.checkpoint).lower().endswith(".onnx"):
        return
    try:
        info = read_info(config.model.checkpoint)
    except CheckpointError:
        return  # the backend says what is wrong with it
    io.check_raster(ds, bands=info.in_channels)
    model_resolution(config, info, ds)


def _output_names(config: PipelineConfig) -> dict[str, str]:
    """The file names of the outputs this run writes, by kind."""
    names = output_names(config.input, config.vectorize.format)
    for key, wanted in (("confidence", config.outputs.confidence),
                        ("polygons", config.vectorize.enabled), ("quicklook", config.quicklook)):
        if not wanted:
            del names[key]
    return names


def _write_maps(config: PipelineConfig, info: ModelInfo, profile: dict[str, Any],
                plan: WindowPlan, grid: list[tiling.Tile],
                crf: tuple[crf_module.CRFParams, crf_module.ColourMapping] | None,
                staged: dict[str, Path], progress: ProgressFactory | None,
                timings: dict[str, float]) -> tuple[np.ndarray, int | None]:
    """Predict every tile into the staged class raster (and confidence) and make the polygons,
    streamed from the finished strips where possible; returns the pixel count per class and
    the polygon count (``None`` without polygons)."""
    writer = ClassMapWriter(profile, staged["classes"], staged.get("confidence"),
                            info.classes, info.colours)
    polygons = _polygon_stream(config, info, profile, staged["polygons"]) \
        if _streams_polygons(config) else None

    # Strips are delivered from dask's threads. An interrupt (Ctrl-C, SIGTERM) unwinds this
    # thread while a delivery may still be writing in another one: once stopped, no delivery
    # starts, and the cleanup waits for the one in progress, so the staging folder is removed
    # with nothing left writing into it.
    stopped, writing_lock = threading.Event(), threading.Lock()

    def deliver(strip: Strip) -> None:
        with writing_lock:
            if stopped.is_set():
                raise _Stopped
            writer.write(strip)
            if polygons is not None:
                polygons.put(strip)

    try:
        t0 = time.perf_counter()
        _predict_all(config, plan, grid, StripAssembler(grid, profile["height"],
                                                        profile["width"]), deliver, crf, progress)
        timings["predict_and_refine"] = time.perf_counter() - t0
        if not writer.counts.any():
            raise InputError(f"{config.input.name}: every pixel is nodata (masked); "
                             "check the raster's nodata value or mask")
        trim_heap()  # prediction's freed buffers stay resident otherwise
        t0 = time.perf_counter()
        if polygons is not None:
            polygons.finish_input()  # the last strip's polygons are made while COGs are
        writer.finish()
        timings["write_cog"] = time.perf_counter() - t0
        polygon_count = None
        if polygons is not None:
            polygon_count = polygons.result().polygons
            timings["vectorize"] = time.perf_counter() - t0
        elif config.vectorize.enabled:  # small-region merging needs the whole raster
            t0 = time.perf_counter()
            polygon_count = _vectorize_whole(config, info, staged)
            timings["vectorize"] = time.perf_counter() - t0
    finally:
        stopped.set()
        with writing_lock:  # a delivery in progress in a dask thread ends first
            pass
        if polygons is not None:
            polygons.cancel()
        writer.close()
    return writer.counts, polygon_count


def _vectorize_whole(config: PipelineConfig, info: ModelInfo, staged: dict[str, Path]) -> int:
    """The polygons of the finished class raster; returns their count."""
    from deeplab_geo.vectorize import vectorize  # GeoPandas loads when needed

    return vectorize(staged["classes"], staged["polygons"], class_names=info.classes,
                     settings=config.vectorize, confidence=staged.get("confidence"),
                     source=config.input.name).polygons


def _polygon_stream(config: PipelineConfig, info: ModelInfo, profile: dict[str, Any],
                    path: Path) -> _Background:
    """A thread that makes the polygons of the strips put to it, as they are finished."""
    from deeplab_geo.vectorize import vectorize_strips  # GeoPandas loads when needed

    return _Background(lambda strips: vectorize_strips(
        strips, path, crs=profile["crs"].to_wkt(), transform=profile["transform"],
        width=profile["width"], height=profile["height"], class_names=info.classes,
        settings=config.vectorize, with_confidence=config.outputs.confidence,
        confidence_scale=CONFIDENCE_SCALE, nodata=CLASS_NODATA, source=config.input.name))


class _Stopped(Exception):
    """A strip arrived after its run stopped (interrupted or failed); it is not written."""


def _streams_polygons(config: PipelineConfig) -> bool:
    """Polygons are made from strips as they are predicted, except with small-region merging,
    which needs the finished class raster."""
    settings = config.vectorize
    return settings.enabled and not (settings.min_area > 0 and settings.min_area_mode == "merge")


def _predict_all(config: PipelineConfig, plan: WindowPlan, grid: list[tiling.Tile],
                 assembler: StripAssembler,
                 deliver: Callable[[Strip], None],
                 crf: tuple[crf_module.CRFParams, crf_module.ColourMapping] | None,
                 progress: ProgressFactory | None) -> None:
    settings, gdal = window_settings(config, plan, crf), sources.gdal_options(config)
    jobs = [TileJob(str(config.input), batch, settings, gdal)
            for batch in tiling.batches(grid, plan.batch_size)]
    bar = progress(len(grid)) if progress else None

    def hand_on(job: TileJob, cores: list[TileCore]) -> int:
        for tile, core in zip(job.tiles, cores):
            for strip in assembler.add(tile, core):
                deliver(strip)
        return len(job.tiles)

    try:
        with cluster_module.connect(config.cluster, config.model.device) as client:
            if client is None:
                limit = config.execution.batches_in_flight(config.execution.workers)
                _compute_local(jobs, hand_on, bar, config.execution.workers, limit)
            else:
                limit = config.execution.batches_in_flight(sum(client.nthreads().values()))
                _compute_distributed(client, jobs, hand_on, bar, limit)
    finally:
        if bar is not None:
            bar.close()
    if not assembler.complete:  # every tile was handed on, so every strip must be done
        raise RuntimeError("internal error: tiles were lost between prediction and writing")


HandOn = Callable[[TileJob, list[TileCore]], int]


def _compute_local(jobs: list[TileJob], hand_on: HandOn, bar: Any, workers: int,
                   in_flight: int) -> None:
    """One dask graph on the local threaded scheduler, bounded and in row-major order.

    ``batch-i`` computes batch i; ``hand-i`` hands its cores on and waits for ``hand-(i-1)``,
    so strips are completed top to bottom and GeoTIFF blocks are written once. ``batch-i``
    also waits for ``hand-(i - in_flight)``: at most ``in_flight`` batches are being computed or
    wait to be handed on, whichever side is slower.
    """
    graph: dict[str, Any] = {}
    readers = io.ThreadReaders()  # each thread keeps the raster open: blocks decoded once
    for i, job in enumerate(jobs):
        gate = f"hand-{i - in_flight}" if i >= in_flight else None
        graph[f"batch-{i}"] = (_after, process_batch, job, readers, gate)
        previous = f"hand-{i - 1}" if i else None
        graph[f"hand-{i}"] = (_after, hand_on, job, f"batch-{i}", previous)
    with _ProgressCallback(bar):
        dask.threaded.get(graph, f"hand-{len(jobs) - 1}", num_workers=workers)
    readers.close()  # every batch is done; after a failure they close as they are dropped


def _after(func: Callable[..., Any], *args: Any) -> Any:
    """``func`` on all arguments but the last, which is only a dependency (graph order)."""
    return func(*args[:-1])


def _compute_distributed(client: Any, jobs: list[TileJob], hand_on: HandOn, bar: Any,
                         in_flight: int) -> None:
    """Batches run on the cluster's workers; their cores are handed on here as they arrive.

    Worker processes started by a nanny are daemonic and start no CRF helpers: they refine
    their tiles themselves (:func:`deeplab_geo.crf.refine_many`), and parallelism comes from
    the workers.
    """

    def received(index: int, cores: list[TileCore]) -> None:
        done = hand_on(jobs[index], cores)
        if bar is not None:
            bar.update(done)

    cluster_module.map_unordered(client, process_batch, jobs, received, in_flight=in_flight)


class _ProgressCallback(Callback):
    """Advance a progress bar by the tiles of each batch handed on."""

    def __init__(self, bar: Any) -> None:
        super().__init__()
        self._bar = bar

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if self._bar is not None and isinstance(key, str) and key.startswith("hand-"):
            self._bar.update(result)


_END, _CANCEL = object(), object()


class _Cancelled(Exception):
    pass


class _Background:
    """``consume(items)`` in a thread, over the items :meth:`put` here, in order.

    At most ``size`` items wait, so a slow consumer holds the producer back (and with it
    prediction) instead of letting items pile up. An error in the consumer is raised by the
    next :meth:`put` and by :meth:`result`; the consumer's thread then drains what is put so
    that the producer never blocks.
    """

    def __init__(self, consume: Callable[[Iterator[Any]], Any], size: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(size)
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(consume,), daemon=True,
                                        name="deeplab-geo-polygons")
        self._thread.start()

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish_input(self) -> None:
        """No more items: the consumer finishes what it has."""
        self._queue.put(_END)

    def result(self) -> Any:
        """Wait for the consumer; its result, or its error raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Stop the consumer (its items iterator raises) and wait for it; a no-op once it
        ended."""
        if self._thread.is_alive():
            self._queue.put(_CANCEL)
            self._thread.join()

    def _items(self) -> Iterator[Any]:
        while (item := self._queue.get()) is not _END:
            if item is _CANCEL:
                raise _Cancelled
            yield item

    def _main(self, consume: Callable[[Iterator[Any]], Any]) -> None:
        try:
            self._result = consume(self._items())
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the producer's thread
            self._error = exc
            while self._queue.get() not in (_END, _CANCEL):
                pass


def _report(config: PipelineConfig, profile: dict, grid: list[tiling.Tile], counts: np.ndarray,
            class_names: list[str], timings: dict[str, float],
            polygon_count: int | None, plan: WindowPlan,
            run_plan: planning.RunPlan) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    pixels = int(profile["width"]) * int(profile["height"])
    tiled = sum(t.row.size * t.col.size for t in grid)
    return {
        "config": json.loads(config.model_dump_json()),
        "versions": {
            "deeplab_geo": deeplab_geo.__version__, "python": platform.python_version(),
            "torch": torch_version, "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__, "dask": dask.__version__,
        },
        "raster": {"width": profile["width"], "height": profile["height"],
                   "crs": profile["crs"].to_string(), "tiles": len(grid),
                   "largest_tile_px": [max(t.row.size for t in grid),
                                       max(t.col.size for t in grid)],
                   "tiled_pixels_per_pixel": round(tiled / pixels, 4)},
        "windows": plan.report(),
        "plan": run_plan.report(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "throughput_mpx_s": round(pixels / 1e6 / timings["predict_and_refine"], 4),
        "pixels_per_class": {n: int(c) for n, c in zip(class_names, counts)},
        "polygons": polygon_count,
    }

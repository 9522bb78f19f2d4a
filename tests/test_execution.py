"""The execution layer at its edges: a slow writer, a raster far larger than memory, a full
disk, and worker processes that die."""

import os
import signal
import subprocess
import threading
import time
import tracemalloc
import weakref

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.config import validate_pipeline
from deeplab_geo.crf import CRFParams
from deeplab_geo.errors import WorkerError
from deeplab_geo.pipeline import planning
from deeplab_geo.pipeline import runner as pipeline_module
from deeplab_geo.pipeline.runner import run
from deeplab_geo.processes import worker_pool
from deeplab_geo.raster.stitch import StripAssembler
from tests.conftest import write_raster

SCENE = 256


def config(tmp_path, raster, **sections):
    return validate_pipeline({
        "input": str(raster), "output_dir": str(tmp_path / "out"),
        "model": {"backend": "pixelwise", "batch_size": 2},
        "tiling": {"tile_size": 32, "overlap": 8}, "crf": {"enabled": False},
        "quicklook": False, **sections,
    })


@pytest.fixture
def scene(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (3, SCENE, SCENE), dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", image)


_COMPUTE = pipeline_module.process_batch
_COUNTER_LOCK = threading.Lock()


class PendingResults:
    """Counts batch results that exist (computed, not yet released after being handed on).

    The counting function is a module-level function over a module-level counter, so that a
    dask.distributed client can pickle it (by reference) for workers in this process.
    """

    current = None

    def __init__(self, monkeypatch):
        self.alive = self.peak = self.batches = 0
        PendingResults.current = self
        monkeypatch.setattr(pipeline_module, "process_batch", counted_process_batch)

    def computed(self):
        with _COUNTER_LOCK:
            self.alive += 1
            self.batches += 1
            self.peak = max(self.peak, self.alive)

    def released(self):
        with _COUNTER_LOCK:
            self.alive -= 1


def counted_process_batch(job, *readers):
    cores = _COMPUTE(job, *readers)
    counter = PendingResults.current
    counter.computed()
    weakref.finalize(cores[0][0], counter.released)
    return cores


def slow_writer(monkeypatch, seconds=0.01):
    """Handing a tile on to the writer takes ``seconds``: the writer is the slow side."""
    add = StripAssembler.add

    def slow(self, tile, core):
        time.sleep(seconds)
        return add(self, tile, core)

    monkeypatch.setattr(StripAssembler, "add", slow)


def test_pending_results_stay_bounded_with_a_slow_writer(tmp_path, scene, pixelwise, monkeypatch):
    pending = PendingResults(monkeypatch)
    slow_writer(monkeypatch)
    run(config(tmp_path, scene, execution={"in_flight": 3, "workers": 2}))
    assert pending.batches > 30  # 121 tiles in batches of 2
    assert pending.peak <= 3 + 1  # in flight, plus one being released


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_pending_results_stay_bounded_on_a_cluster(tmp_path, scene, pixelwise, monkeypatch):
    """A dask.distributed cluster whose workers are threads of this process (so the test
    backend and the counter reach them)."""
    from distributed import LocalCluster

    pending = PendingResults(monkeypatch)
    slow_writer(monkeypatch)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        run(config(tmp_path, scene, cluster={"address": cluster.scheduler_address},
                   execution={"in_flight": 3}))
    assert pending.batches > 30
    assert pending.peak <= 3 + 1


def test_an_interrupt_waits_for_the_write_in_progress_before_removing_the_staging(
        tmp_path, scene, pixelwise, monkeypatch):
    """Ctrl-C (or SIGTERM) reaches the main thread while a dask thread writes a strip: the
    staging folder is removed only once that write is done, so nothing is left behind."""
    import shutil

    from deeplab_geo.raster import io as raster_io
    from deeplab_geo.raster.stitch import ClassMapWriter

    events = []
    write = ClassMapWriter.write

    def slow_write(self, strip):
        if not events:
            os.kill(os.getpid(), signal.SIGINT)  # the main thread unwinds while this write goes on
            time.sleep(0.5)
        write(self, strip)
        events.append("write")

    rmtree = shutil.rmtree
    monkeypatch.setattr(ClassMapWriter, "write", slow_write)
    monkeypatch.setattr(raster_io.shutil, "rmtree",
                        lambda path, **kw: events.append("cleanup") or rmtree(path, **kw))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, scene, execution={"workers": 2}))
    assert events[:2] == ["write", "cleanup"] and "write" not in events[2:]
    assert not list((tmp_path / "out").glob(".deeplab-geo-*"))


def test_in_flight_moved_from_cluster_to_execution(tmp_path, scene):
    from deeplab_geo.errors import ConfigError

    with pytest.raises(ConfigError, match="write execution.in_flight instead"):
        config(tmp_path, scene, cluster={"local_workers": 2, "in_flight": 2})


def test_each_thread_opens_the_raster_once_for_all_its_batches(tmp_path, scene, pixelwise,
                                                                monkeypatch):
    """Batches share the file's blocks: a thread keeps the raster open (GDAL's block cache then
    decodes a block once), instead of opening it for every batch, and closes it at the end."""
    from deeplab_geo.raster import io

    opened = []
    real_open = rasterio.open

    def counting_open(path, *args, **kwargs):
        ds = real_open(path, *args, **kwargs)
        if str(path) == str(scene) and not args and not kwargs:
            opened.append((threading.get_ident(), ds))
        return ds

    monkeypatch.setattr(io.rasterio, "open", counting_open)
    result = run(config(tmp_path, scene, execution={"workers": 2}))
    assert result.report["raster"]["tiles"] == 121  # in 61 batches of 2
    batch_reads = [ds for thread, ds in opened if thread != threading.get_ident()]
    assert 1 <= len(batch_reads) <= 2
    assert all(ds.closed for ds in batch_reads)


def mostly_nodata_vrt(tmp_path, size, data=64):
    """A ``size`` x ``size`` VRT whose only source is a ``data`` px GeoTIFF in its corner."""
    image = np.random.default_rng(3).integers(1, 255, (3, data, data), dtype=np.uint8)
    corner = write_raster(tmp_path / "corner.tif", image, nodata=0)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>'
        f'<SimpleSource><SourceFilename relativeToVRT="1">corner.tif</SourceFilename>'
        f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{data}" '
        f'ySize="{data}"/><DstRect xOff="0" yOff="0" xSize="{data}" ySize="{data}"/>'
        f"</SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    with rasterio.open(corner) as ds:
        crs, transform = ds.crs.to_wkt(), ds.transform.to_gdal()
    path = tmp_path / "mosaic.vrt"
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{crs}</SRS>'
                    f"<GeoTransform>{', '.join(map(repr, transform))}</GeoTransform>{bands}"
                    "</VRTDataset>")
    return path, image


def test_mostly_nodata_raster_far_larger_than_memory(tmp_path, pixelwise, fresh_speeds):
    """50,000 x 50,000 px (2.5 Gpx: 5 GB as uint8 class and confidence arrays) with data in a
    64 px corner: memory, disk and inference scale with the data, not the extent."""
    size = 50_000
    vrt, image = mostly_nodata_vrt(tmp_path, size)
    tracemalloc.start()
    try:
        result = run(config(tmp_path, vrt, model={"backend": "pixelwise", "batch_size": 4},
                            tiling={"tile_size": 1024, "overlap": 64}, quicklook=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MB of arrays"
    # the plan's speed probe (one batch of the first tile with data), then the one tile
    # that holds data
    assert pixelwise.predictor.batch_sizes == [4, 1]
    with rasterio.open(result.outputs["classes"]) as ds:
        assert (ds.width, ds.height) == (size, size)
        assert (ds.read(1, window=((0, 64), (0, 64))) == image.argmax(0)).all()
        assert (ds.read(1, window=((size - 64, size), (size - 64, size))) == 255).all()
        assert len(ds.overviews(1)) == 7
    for key in ("classes", "confidence", "polygons"):
        assert result.outputs[key].stat().st_size < 5 * 2**20  # sparse: blocks of data only
    assert result.report["polygons"] > 0
    assert result.outputs["quicklook"].stat().st_size > 0


def test_a_preview_averages_only_what_gdal_can_average_cheaply():
    from rasterio.enums import Resampling

    from deeplab_geo.raster.quicklook import preview_resampling

    preview = (1024, 1024)
    assert preview_resampling(8192, 8192, preview, False) == Resampling.average
    assert preview_resampling(100_000, 100_000, preview, True) == Resampling.average
    # without overviews, averaging would read all 10 Gpx of a mosaic (27 s against 0.1 s)
    assert preview_resampling(100_000, 100_000, preview, False) == Resampling.nearest
    assert preview_resampling(512, 512, (1024, 1024), False) == Resampling.nearest


@pytest.mark.parametrize("size", [512, 1024])
def test_a_full_disk_is_one_line_exit_3_and_leaves_nothing(tmp_path, small_disk, pixelwise,
                                                          size, monkeypatch):
    """512 px: the polygons no longer fit; 1024 px: the class raster's blocks no longer fit.
    The plan's up-front check of the free space is an estimate; with it out of the way the
    disk fills while the run writes (the check itself: tests/test_planning.py)."""
    monkeypatch.setattr(planning, "_free_mb", lambda folder: None)
    image = np.random.default_rng(4).integers(0, 255, (3, size, size), dtype=np.uint8)
    raster = write_raster(tmp_path / "noisy.tif", image)
    out = small_disk / "out"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"input: {raster}\noutput_dir: {out}\n"
                        "model: {backend: pixelwise}\ncrf: {enabled: false}\n")
    result = CliRunner().invoke(main, ["run", str(pipeline), "--quiet"])
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert str(small_disk) in lines[0] and "no space left on device" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_a_pool_whose_worker_was_killed_is_replaced():
    pool = worker_pool(2)
    first = pool.executor()
    assert first.submit(int, "7").result() == 7
    for process in list(first._processes.values()):
        process.kill()
        process.join()
    assert pool.map(int, [(str(i),) for i in range(4)]) == [0, 1, 2, 3]
    assert pool.executor() is not first


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_work_lost_twice_is_one_worker_error_and_the_pool_recovers():
    pool = worker_pool(1)
    with pytest.raises(WorkerError, match="died twice .* out-of-memory killer"):
        pool.map(_die, [()])
    assert pool.map(int, [("3",)]) == [3]


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_crf_worker_killed_during_refinement_changes_nothing():
    from deeplab_geo import crf
    from tests.test_crf import blurred_boundary

    image, probs = blurred_boundary(width=384, height=384, edge=192, predicted_edge=170)
    items = [(probs, image), (probs[::-1].copy(), image)] * 4
    settings = CRFParams(iterations=10)
    started = time.perf_counter()
    serial = crf.refine_many(items, settings, processes=1)
    seconds = time.perf_counter() - started
    executor = crf.start_pool(2).executor()
    victim = next(iter(executor._processes))
    killer = threading.Timer(seconds / 8, os.kill, (victim, signal.SIGKILL))  # mid-run
    killer.start()
    refined = crf.refine_many(items, settings, processes=2)
    killer.join()
    assert all(np.array_equal(a, b) for a, b in zip(serial, refined))
    assert crf.start_pool(2).executor() is not executor  # replaced
    again = crf.refine_many(items, settings, processes=2)  # and the next call works
    assert all(np.array_equal(a, b) for a, b in zip(serial, again))


class KillCrfWorkerOnFirstBatch:
    """A progress bar that SIGKILLs one CRF worker when the first batch has been written."""

    def __init__(self, total):
        self.total, self.done, self.killed = total, 0, False

    def update(self, n):
        if not self.killed:
            from deeplab_geo import crf

            os.kill(next(iter(crf.start_pool(2).executor()._processes)), signal.SIGKILL)
            self.killed = True
        self.done += n

    def close(self):
        pass


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_run_goes_on_when_a_crf_worker_is_killed(tmp_path, pixelwise):
    image = np.random.default_rng(5).integers(0, 255, (3, 96, 96), dtype=np.uint8)
    raster = write_raster(tmp_path / "crf.tif", image)
    sections = {"crf": {"iterations": 3}, "execution": {"crf_processes": 2},
                "vectorize": {"enabled": False}}
    reference = run(config(tmp_path / "a", raster, **sections))
    killed = run(config(tmp_path / "b", raster, **sections), progress=KillCrfWorkerOnFirstBatch)
    with rasterio.open(reference.outputs["classes"]) as a, \
            rasterio.open(killed.outputs["classes"]) as b:
        assert (a.read(1) == b.read(1)).all()


_HEAP = ("import sys; from deeplab_geo.processes import bound_heap; "
         "from tests.heap_probe import freed_arrays_resident_mb; "
         "bounded = sys.argv[1] == 'bounded' and bound_heap(); "
         "print(bounded, freed_arrays_resident_mb())")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.uname().sysname != "Linux",
                    reason="glibc on Linux")
@pytest.mark.parametrize("mode", ["bounded", "default"])
def test_freed_tile_sized_arrays_go_back_to_the_system(mode):
    """After bound_heap, 200 MB of freed 6 MiB arrays leave the process; glibc's default keeps
    them resident behind a block still in use (the growth the 100,000 px run measured)."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True,
                          check=True, cwd=root)
    bounded, grown_mb = done.stdout.split()
    if mode == "bounded":
        assert bounded == "True" and float(grown_mb) < 20
    else:
        assert float(grown_mb) > 150  # the behaviour bound_heap changes is still there


def test_helper_processes_and_runs_bound_the_heap(tmp_path, scene, pixelwise, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline_module, "bound_heap", lambda: calls.append("run"))
    run(config(tmp_path, scene))
    assert calls == ["run"]
    assert worker_pool(1).map(_heap_is_bounded, [()]) == [True]


def _heap_is_bounded() -> bool:
    """In a helper: whether freed 6 MiB arrays leave (they do once bound_heap has run)."""
    from tests.heap_probe import freed_arrays_resident_mb

    return freed_arrays_resident_mb() < 20

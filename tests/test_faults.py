"""Faults at any moment never stop a batch.

Helper processes are killed (SIGKILL, as the out-of-memory killer does) at chosen moments
through deeplab_geo.processes' fault hook (``DEEPLAB_GEO_FAULTS``): before they start, while
their pool warms up, at their N-th task, between inputs. The shipped pipeline runs a batch of
two generated rasters (a tiny model and small tiles, so that every batch of tiles goes to the
CRF's process pool). Each cell ends with outputs identical to an undisturbed run's, or, where
the work is lost twice, with that input failed in one line while the other finishes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner

from deeplab_geo import processes
from deeplab_geo.cli import main
from deeplab_geo.config import load_pipeline
from deeplab_geo.errors import WorkerError
from deeplab_geo.pipeline.batch import LOG, run_batch
from tests.conftest import two_region_image, write_raster

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"tiling.tile_size": 64, "tiling.overlap": 16, "crf.iterations": 2,
         "model.batch_size": 4, "execution.crf_processes": 2, "quicklook": False}


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """``faults("crf:task:2")`` arms the fault hook for the helper processes started from now
    on (pools already running are stopped first, and again afterwards)."""
    folder = tmp_path / "faults"
    folder.mkdir()
    processes.shutdown()

    def arm(spec: str) -> None:
        monkeypatch.setenv(processes.FAULTS_VARIABLE, spec)
        monkeypatch.setenv("DEEPLAB_GEO_FAULTS_DIR", str(folder))

    yield arm
    processes.shutdown()


@pytest.fixture
def rasters(tmp_path) -> Path:
    folder = tmp_path / "rasters"
    folder.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_raster(folder / f"{name}.tif", two_region_image(96, 128, seed=seed))
    return folder


def shipped(rasters: Path, out: Path, checkpoint: Path, **more):
    """pipelines/landcover.yaml on the folder of rasters, small."""
    return load_pipeline(ROOT / "pipelines" / "landcover.yaml",
                         {"input": rasters, "output_dir": out,
                          "model.checkpoint": str(checkpoint), **SMALL, **more})


def outputs(out: Path, key: str) -> tuple[np.ndarray, list]:
    with rasterio.open(out / key / f"{key}_classes.tif") as ds:
        classes = ds.read(1)
    frame = pyogrio.read_dataframe(out / key / f"{key}.gpkg")
    return classes, sorted(zip(frame["class_id"], frame.geometry.area.round(6)))


@pytest.fixture
def undisturbed(tmp_path, rasters, tiny_checkpoint):
    out = tmp_path / "undisturbed"
    result = run_batch(shipped(rasters, out, tiny_checkpoint))
    assert [o.status for o in result.outcomes] == ["done", "done"]
    processes.shutdown()
    return {key: outputs(out, key) for key in ("a", "b")}


def same_outputs(out: Path, expected: dict, keys=("a", "b")) -> None:
    for key in keys:
        classes, polygons = outputs(out, key)
        np.testing.assert_array_equal(classes, expected[key][0])
        assert polygons == expected[key][1]


@pytest.mark.parametrize("spec", [
    "crf:start",         # a worker dies before it has started
    "crf:warmup",        # while the pool warms up (the others wait at the barrier)
    "crf:task:2",        # as a worker begins its second task
])
def test_a_helper_killed_once_at_any_moment_changes_nothing(tmp_path, rasters, tiny_checkpoint,
                                                            undisturbed, faults, spec):
    faults(spec)
    out = tmp_path / "out"
    result = run_batch(shipped(rasters, out, tiny_checkpoint))
    assert [o.status for o in result.outcomes] == ["done", "done"], result.outcomes
    assert list((tmp_path / "faults").iterdir()), "the fault never fired"
    same_outputs(out, undisturbed)


def test_helpers_killed_between_inputs_are_replaced(tmp_path, rasters, tiny_checkpoint,
                                                   undisturbed, faults):
    killed = []

    def kill_helpers(index, total, outcome):
        if index == 0:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    out = tmp_path / "out"
    result = run_batch(shipped(rasters, out, tiny_checkpoint), on_outcome=kill_helpers)
    assert killed and [o.status for o in result.outcomes] == ["done", "done"]
    same_outputs(out, undisturbed)


def test_work_lost_twice_fails_that_input_in_one_line_and_the_batch_goes_on(
        tmp_path, rasters, tiny_checkpoint, undisturbed, faults):
    faults("crf:task:1:2")  # the first task of a worker, twice: the retry is lost too
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(ROOT / "pipelines" / "landcover.yaml"),
                                       "--input", str(rasters), "--output-dir", str(out),
                                       "--progress", "none",
                                       "--set", f"model.checkpoint={tiny_checkpoint}",
                                       *(f"--set={k}={v}" for k, v in SMALL.items())])
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert failed == [
        "[1/2] a: FAILED: a crf helper process died twice on the same work (killed by "
        "SIGKILL, often the out-of-memory killer; this run's processes held "
        + failed[0].split("processes held ")[1].split(" MB")[0] + " MB); free memory, or "
        "lower execution.crf_processes or tiling.tile_size"]
    assert "Traceback" not in result.output
    assert not (out / "a").exists()  # nothing of the failed input
    same_outputs(out, undisturbed, keys=("b",))
    manifest = json.loads((out / "manifest.json").read_text())["inputs"]
    assert [e["status"] for e in manifest.values()] == ["failed", "done"]


def test_a_pool_that_cannot_start_twice_is_one_worker_error(faults):
    faults("crf:warmup:1:2")
    pool = processes.worker_pool(2, warm=True, role="crf")
    with pytest.raises(WorkerError, match=r"^a crf helper process died twice starting \("
                                          r"killed by SIGKILL, often the out-of-memory "
                                          r"killer; this run's processes held [\d,]+ MB\)"):
        pool.executor()
    assert pool.map(int, [("5",)]) == [5]  # the next use starts a new pool


def test_polygon_helpers_killed_mid_task_are_retried(tmp_path, faults, monkeypatch):
    """The vectorizer's helper processes (large rasters: here any size) at their second strip."""
    from deeplab_geo.config import VectorizeSettings
    from deeplab_geo.vectorize import regions, vectorize

    monkeypatch.setattr(regions, "HELPER_MIN_PIXELS", 0)
    rng = np.random.default_rng(0)
    classes = write_raster(tmp_path / "classes.tif",
                           rng.integers(0, 3, (1, 256, 96), dtype=np.uint8), nodata=255)
    settings = VectorizeSettings(workers=2)
    expected = vectorize(classes, tmp_path / "plain.gpkg", class_names=["a", "b", "c"],
                         settings=settings, strip_rows=64)
    processes.shutdown()
    faults("vectorize:task:2")
    again = vectorize(classes, tmp_path / "faulted.gpkg", class_names=["a", "b", "c"],
                      settings=settings, strip_rows=64)
    assert list((tmp_path / "faults").iterdir()), "the fault never fired"
    assert again.polygons == expected.polygons > 0
    plain, faulted = (pyogrio.read_dataframe(tmp_path / f"{n}.gpkg") for n in ("plain", "faulted"))
    assert plain.geometry.to_wkb().tolist() == faulted.geometry.to_wkb().tolist()


def test_an_unexpected_error_fails_its_input_only_with_its_traceback_in_the_log(
        tmp_path, rasters, pixelwise):
    """A bug (here a RuntimeError in the backend on the second raster) is one line for that
    input; its traceback goes to output_dir/deeplab-geo.log; the other input is done."""
    plain = pixelwise.predictor.predict

    def predict(tiles):
        if tiles.mean() > 100:
            raise RuntimeError("backend exploded\nsecond line")
        return plain(tiles)

    pixelwise.predictor.predict = predict
    bright = rasters / "b.tif"
    with rasterio.open(bright, "r+") as ds:
        ds.write(np.full((3, 96, 128), 220, np.uint8))
    out = tmp_path / "out"
    result = run_batch(load_pipeline(ROOT / "pipelines" / "landcover.yaml",
                                     {"input": rasters, "output_dir": out,
                                      "model.backend": "pixelwise", "crf.enabled": False,
                                      "quicklook": False}))
    assert [o.status for o in result.outcomes] == ["done", "failed"]
    assert result.outcomes[1].error == ("unexpected RuntimeError: backend exploded "
                                        f"(traceback in {out / LOG})")
    log = (out / LOG).read_text()
    assert "Traceback (most recent call last)" in log and "backend exploded" in log
    assert not (out / "b").exists() and (out / "a" / "a_classes.tif").exists()


@pytest.mark.slow  # starts a LocalCluster twice: make test PYTEST_ARGS=--run-slow
def test_a_dask_worker_killed_mid_batch_is_recovered(tmp_path, rasters, tiny_checkpoint,
                                                      undisturbed, faults):
    faults("dask:task:1")
    out = tmp_path / "out"
    result = run_batch(shipped(rasters, out, tiny_checkpoint,
                               **{"cluster.local_workers": 2, "crf.enabled": False}))
    assert [o.status for o in result.outcomes] == ["done", "done"], result.outcomes
    assert list((tmp_path / "faults").iterdir()), "the fault never fired"
    plain = tmp_path / "plain"
    processes.shutdown()
    run_batch(shipped(rasters, plain, tiny_checkpoint, **{"crf.enabled": False}))
    same_outputs(out, {key: outputs(plain, key) for key in ("a", "b")})

"""Runs on dask.distributed: a LocalCluster of worker processes, a worker killed mid-run."""

import os
import signal
import threading

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from distributed import default_client

from deeplab_geo.cli import main
from deeplab_geo.config import validate_pipeline
from deeplab_geo.errors import ClusterError, ConfigError
from deeplab_geo.pipeline import cluster
from deeplab_geo.pipeline.runner import run
from tests.conftest import write_raster


def test_gpu_workers_are_pinned_round_robin():
    assert cluster.gpu_worker_env(3, 2) == [{"CUDA_VISIBLE_DEVICES": "0"},
                                            {"CUDA_VISIBLE_DEVICES": "1"},
                                            {"CUDA_VISIBLE_DEVICES": "0"}]
    assert cluster.gpu_worker_env(2, 0) == [{}, {}]


def test_address_and_local_workers_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="either address .* or local_workers"):
        validate_pipeline({"input": "x.tif", "output_dir": str(tmp_path),
                           "cluster": {"address": "tcp://127.0.0.1:8786", "local_workers": 2}})


def test_unreachable_scheduler_is_a_one_line_error_and_writes_nothing(tiny_pipeline,
                                                                      monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    result = CliRunner().invoke(main, ["run", str(tiny_pipeline), "--quiet",
                                       "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == ClusterError.exit_code
    assert result.stderr.count("\n") == 1
    assert "cannot connect to tcp://127.0.0.1:9" in result.stderr
    out = tiny_pipeline.parent / "out"
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (3, 160, 192), dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", image)


def pipeline_config(tmp_path, raster, checkpoint, name, **sections):
    return validate_pipeline({
        "input": str(raster), "output_dir": str(tmp_path / name),
        "model": {"checkpoint": str(checkpoint), "backend": "torch", "device": "cpu",
                  "batch_size": 1},
        "tiling": {"tile_size": 48, "overlap": 16}, "crf": {"iterations": 2},
        "vectorize": {"enabled": False}, "quicklook": False, **sections,
    })


def read_outputs(result):
    with rasterio.open(result.outputs["classes"]) as cls, \
            rasterio.open(result.outputs["confidence"]) as conf:
        return cls.read(1), conf.read(1)


class KillOneWorkerOnFirstTile:
    """A progress bar that SIGKILLs one worker process when the first batch arrives."""

    def __init__(self, total):
        self.total, self.done, self.killed_at = total, 0, None

    def update(self, n):
        if self.killed_at is None:
            client = default_client()
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            self.killed_at = self.done
        self.done += n

    def close(self):
        pass


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_local_cluster_survives_a_killed_worker_with_identical_output(
        tmp_path, scene, tiny_checkpoint):
    """Two worker processes; one is killed mid-run; the output equals a local threaded run."""
    reference = read_outputs(run(pipeline_config(tmp_path, scene, tiny_checkpoint, "local")))
    bars = []

    def progress(total):
        bars.append(KillOneWorkerOnFirstTile(total))
        return bars[-1]

    config = pipeline_config(tmp_path, scene, tiny_checkpoint, "cluster",
                             cluster={"local_workers": 2}, execution={"in_flight": 2})
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=run(config, progress=progress)))
    thread.start()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the run did not finish after a worker was killed"
    bar = bars[0]
    assert bar.killed_at is not None and bar.killed_at < bar.total  # killed mid-run
    assert bar.done == bar.total == result["out"].report["raster"]["tiles"]
    classes, confidence = read_outputs(result["out"])
    assert (classes == reference[0]).all()
    assert np.allclose(confidence, reference[1], atol=1e-5)


def _model_loads():
    from deeplab_geo.backends import torch_backend

    return torch_backend._load_cached.cache_info().misses


@pytest.mark.slow  # SIGKILL / cluster / 1536 px: make test PYTEST_ARGS=--run-slow
def test_existing_cluster_by_address_loads_the_model_once_per_worker(
        tmp_path, scene, tiny_checkpoint):
    from distributed import Client, LocalCluster

    reference = read_outputs(run(pipeline_config(tmp_path, scene, tiny_checkpoint, "local")))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as existing, Client(existing) as client:
        config = pipeline_config(tmp_path, scene, tiny_checkpoint, "remote",
                                 cluster={"address": existing.scheduler_address})
        classes, _ = read_outputs(run(config))
        loads = client.run(_model_loads)
    assert (classes == reference[0]).all()
    assert sorted(loads.values())[-1] == 1  # batches ran on workers, each loaded it once

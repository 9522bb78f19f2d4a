"""Running a pipeline's tile batches on a dask.distributed cluster.

Three ways to execute a run (``cluster`` section of the pipeline):

* neither ``address`` nor ``local_workers`` (the default): dask's local threaded scheduler in
  this process, ``execution.workers`` threads;
* ``local_workers: N``: a ``LocalCluster`` of N worker processes on this machine, started for
  the run and closed after it. With ``model.device`` on CUDA each worker is pinned to one GPU
  (``CUDA_VISIBLE_DEVICES``), round robin over the GPUs;
* ``address: tcp://host:8786`` (or ``deeplab-geo run --scheduler``): an existing cluster. Its
  workers need deeplab-geo (and the backend's plugin) installed and must see the input raster
  and the checkpoint under the same paths as this machine (a shared file system).

Workers only compute: each task reads its windows, predicts and refines them, and returns the
tiles' cores. This process writes every result into the output rasters, so outputs never live
on a worker. At most ``execution.in_flight`` tasks are submitted at a time, which bounds the
memory held in results whatever the raster size and however slow writing is. A task lost
with a worker that dies is recomputed on another (the scheduler's own recovery; on a local
cluster once, as every helper process's work, then it is one
:class:`~deeplab_geo.errors.WorkerError`); results are written exactly once, so the output is
the same as an uninterrupted run's. Models are loaded once per worker process (backends cache them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from deeplab_geo.config import ClusterSettings
from deeplab_geo.devices import cuda_device_count
from deeplab_geo.errors import ClusterError, WorkerError
from deeplab_geo.processes import role_task

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20


@contextmanager
def connect(settings: ClusterSettings, device: str = "cpu") -> Iterator[Any | None]:
    """A ``distributed.Client`` for the settings, or ``None`` for the local threaded scheduler.

    Raises:
        ClusterError: the scheduler at ``address`` cannot be reached, or a local cluster fails
            to start.
    """
    if settings.address is None and settings.local_workers is None:
        yield None
        return
    from distributed import Client

    cluster = None
    try:
        if settings.address is not None:
            client = Client(settings.address, timeout=CONNECT_TIMEOUT_S)
        else:
            cluster = local_cluster(settings.local_workers, settings.threads_per_worker, device)
            client = Client(cluster, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        where = settings.address or f"a local cluster of {settings.local_workers} workers"
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"cannot connect to {where} ({exc}); start the scheduler "
                           "(`dask scheduler`) or fix cluster.address") from None
    log.info("dask dashboard: %s", client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gpu_worker_env(n_workers: int, gpu_count: int) -> list[dict[str, str]]:
    """Per-worker environments pinning each worker to one GPU, round robin (pure function)."""
    if gpu_count < 1:
        return [{} for _ in range(n_workers)]
    return [{"CUDA_VISIBLE_DEVICES": str(i % gpu_count)} for i in range(n_workers)]


def local_cluster(n_workers: int, threads_per_worker: int = 1, device: str = "cpu") -> Any:
    """Start a cluster of ``n_workers`` worker processes on this machine.

    On CUDA devices each worker sees one GPU (so ``cuda`` inside a worker is its own GPU).
    """
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = 0
    if device.startswith("cuda") or device == "auto":
        gpus = cuda_device_count()
    workers = {
        f"worker-{i}": {"cls": Nanny, "options": {"nthreads": threads_per_worker, "env": env}}
        for i, env in enumerate(gpu_worker_env(n_workers, gpus))
    }
    # deeplab-geo's one recovery policy (deeplab_geo.processes): a task lost with a worker
    # is retried once, and lost again it is one WorkerError line
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0",
                                               "allowed_failures": 1}}
    return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.ERROR)


def map_unordered(client: Any, func: Callable[[Any], Any], items: Iterable[Any],
                  on_result: Callable[[int, Any], None], *, in_flight: int) -> None:
    """Run ``func(item)`` on the cluster and hand each result to ``on_result(index, result)``.

    Results arrive in completion order, in this process. At most ``in_flight`` tasks are
    pending at a time; each result is released from the cluster once handled. A task's
    exception is raised here (the remaining tasks are cancelled).
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    pending: dict[Any, int] = {}
    iterator = enumerate(items)

    def submit_next() -> Any | None:
        for index, item in iterator:
            future = client.submit(role_task, "dask", func, item, pure=False)
            pending[future] = index
            return future
        return None

    first = [submit_next() for _ in range(max(1, in_flight))]
    queue = as_completed([f for f in first if f is not None])
    try:
        for future in queue:
            index = pending.pop(future)
            try:
                result = future.result()
            except KilledWorker:
                raise WorkerError(
                    "a dask worker process died twice on the same batch (killed, often by "
                    "the out-of-memory killer); free memory, or lower cluster.local_workers, "
                    "cluster.threads_per_worker, tiling.tile_size or model.batch_size"
                    ) from None
            on_result(index, result)
            future.release()
            following = submit_next()
            if following is not None:
                queue.add(following)
    finally:
        if pending:
            client.cancel(list(pending))

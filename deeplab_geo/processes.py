"""Helper processes: started with ``spawn`` and ended with the process that started them.

``spawn`` (not ``fork``) is safe next to threaded libraries (torch, ONNX Runtime, GDAL, dask's
thread pool): a forked child inherits locks that other threads may hold.

This is the only module of the package that starts processes (dask.distributed starts its
own workers). Every pool of the package is a :class:`WorkerPool` with a *role* (``crf``,
``vectorize``) and follows one recovery policy, whenever a worker dies (the out-of-memory
killer, ``kill -9``): while the pool starts and warms up, during a task, between tasks or
between inputs. A pool that loses a worker while starting is started once more; work lost
with a worker is retried once in a new pool. A second loss is one
:class:`~deeplab_geo.errors.WorkerError` naming the role, how the worker ended (the signal; a
SIGKILL is usually the out-of-memory killer), the memory the run's processes held, and the
settings that lower it. Either way the next use of the pool starts a new one, so the next
input, and the next run in the same process, work normally.

Faults can be injected for tests (:data:`FAULTS_VARIABLE`): a worker of a chosen role kills
itself at a chosen moment, a bounded number of times in all.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import spawn as mp_spawn
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any

from deeplab_geo.errors import WorkerError


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``signum`` to this process when the process that started it dies (e.g.
    ``kill -9``)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def follow_parent(pid: int) -> bool:
    """End this process, and the helper processes it starts, when process ``pid`` ends.

    For a program that starts this one in a process group of its own (the QGIS plugin starts
    the CLI so that Cancel can stop the group): when that program is killed, nothing else
    would stop this process. Call it from the main thread, before any work.

    When the parent dies, Linux sends SIGHUP (:func:`die_with_parent`). Its handler sends
    SIGTERM to this process, which stops as SIGTERM makes it (the CLI removes what it had
    staged), and to the helper processes, as Cancel does when it signals the whole group,
    including any that threads still running start meanwhile: otherwise the exit would wait
    for their work. A parent that died before the request is not noticed by it, so this then
    checks that ``pid`` is still an ancestor of this process (an orphan is adopted by another
    process, and ``pid`` may since name another one). An ancestor and not only the parent, so
    that a wrapper script in between still works; the link itself is to the direct parent.

    Returns:
        ``False`` when ``pid`` is no longer an ancestor: the caller should exit at once.
        ``True`` otherwise, and always off Linux, where this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return True
    signal.signal(signal.SIGHUP, _stop_with_helpers)
    die_with_parent(signal.SIGHUP)
    ancestor = os.getppid()
    while ancestor > 1:
        if ancestor == pid:
            return True
        ancestor = _parent_of(ancestor)
    return ancestor == pid


_END_HELPERS_EVERY_S = 0.1


def _stop_with_helpers(signum: int, frame: Any) -> None:
    threading.Thread(target=_end_helpers, name="end-helpers", daemon=True).start()
    os.kill(os.getpid(), signal.SIGTERM)


def _end_helpers() -> None:
    """Terminate this process's helper processes, again and again until it exits."""
    while True:
        for helper in multiprocessing.active_children():
            helper.terminate()
        time.sleep(_END_HELPERS_EVERY_S)


def _parent_of(pid: int) -> int:
    """The parent of process ``pid`` (Linux /proc); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])  # after the name: state, ppid, ...


def spawn_pool(processes: int, initializer: Callable[..., None] | None = None,
               initargs: tuple[Any, ...] = (), role: str = "helper", generation: int = 0
               ) -> ProcessPoolExecutor:
    """A ``spawn`` process pool whose workers die with this process, then run ``initializer``.

    Workers start on demand, when a task finds none idle. ``role`` and ``generation`` (the
    how-manieth pool of its :class:`WorkerPool`) name them for :func:`inject_fault`. They do
    not import the starting program's ``__main__`` (:func:`spawn_context`).
    """
    return ProcessPoolExecutor(max_workers=processes, mp_context=spawn_context(),
                               initializer=_start,
                               initargs=(initializer, initargs, role, generation))


def spawn_context() -> multiprocessing.context.BaseContext:
    """``spawn``, except that the new processes do not run the starting program's ``__main__``.

    Python's ``spawn`` imports the parent's main script in every new process, so a script
    without an ``if __name__ == "__main__":`` guard would run again in each helper (and fail
    there, starting helpers of its own). Helpers here run only deeplab-geo's own functions,
    so they need nothing from it: on POSIX the main module is left out of what the new
    process is told to prepare, and a script or notebook needs no guard. Elsewhere: plain
    ``spawn``.
    """
    if sys.platform == "win32":
        return multiprocessing.get_context("spawn")
    return _SPAWN_WITHOUT_MAIN


_LAUNCHING = threading.local()  # set while this module starts a process without __main__


def _preparation_data(name: str, _original: Callable[[str], dict] = mp_spawn.get_preparation_data
                      ) -> dict:
    data = _original(name)
    if getattr(_LAUNCHING, "without_main", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


if sys.platform != "win32":
    from multiprocessing import popen_spawn_posix

    # Installed once: unchanged for every process but those started below.
    mp_spawn.get_preparation_data = _preparation_data

    class _PopenWithoutMain(popen_spawn_posix.Popen):
        def _launch(self, process_obj: Any) -> None:
            _LAUNCHING.without_main = True
            try:
                super()._launch(process_obj)
            finally:
                _LAUNCHING.without_main = False

    class _ProcessWithoutMain(multiprocessing.context.SpawnProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> _PopenWithoutMain:
            return _PopenWithoutMain(process_obj)

    class _SpawnWithoutMain(multiprocessing.context.SpawnContext):
        Process = _ProcessWithoutMain

    _SPAWN_WITHOUT_MAIN = _SpawnWithoutMain()


_ROLE, _GENERATION = "helper", 0  # in a worker: the role and generation of its pool
_TASKS = 0  # in a worker: the tasks it has begun


def _start(initializer: Callable[..., None] | None, initargs: tuple[Any, ...],
           role: str = "helper", generation: int = 0) -> None:
    global _ROLE, _GENERATION
    _ROLE, _GENERATION = role, generation
    inject_fault("start")
    die_with_parent()
    bound_heap()
    if initializer is not None:
        initializer(*initargs)


def _task(function: Callable[..., Any], *args: Any) -> Any:
    """Run one task in a worker (counted, for :func:`inject_fault`'s ``task`` moment)."""
    global _TASKS
    _TASKS += 1
    inject_fault("task", _TASKS)
    return function(*args)


def role_task(role: str, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a worker this module did not start (a dask worker process),
    counted under ``role`` like a task of a :class:`WorkerPool` (see :data:`FAULTS_VARIABLE`).
    """
    global _ROLE
    _ROLE = role
    return _task(function, *args)


_START_TIMEOUT_S = 120
_POLL_S = 0.05
_SETTINGS = {"crf": "execution.crf_processes or tiling.tile_size",
             "vectorize": "vectorize.workers (1: no helper processes)"}


def _start_together(initializer: Callable[[], None] | None, ready: Any) -> None:
    if initializer is not None:
        initializer()
    inject_fault("warmup")
    ready.wait(timeout=_START_TIMEOUT_S)


FAULTS_VARIABLE = "DEEPLAB_GEO_FAULTS"
"""For tests: ``ROLE:MOMENT[:N[:TIMES]],...`` makes a worker of role ``ROLE`` (``crf``,
``vectorize``; ``dask``: a worker process of a local cluster) kill itself with SIGKILL, as the
out-of-memory killer does, at ``MOMENT``: ``start`` (before it starts), ``warmup`` (once
started, while its pool warms up) or ``task`` (as it begins its ``N``-th task, default 1).
Each entry fires ``TIMES`` times in all (default 1), at most once in each pool (so the retry
of lost work meets the next firing), counted across processes in the folder named by
``DEEPLAB_GEO_FAULTS_DIR`` (required)."""


def inject_fault(moment: str, count: int = 1) -> None:
    """In a worker: die now if :data:`FAULTS_VARIABLE` asks for it at ``moment``."""
    spec, folder = os.environ.get(FAULTS_VARIABLE), os.environ.get("DEEPLAB_GEO_FAULTS_DIR")
    if not spec or not folder:
        return
    for entry in spec.split(","):
        role, when, n, times = (entry.split(":") + ["1", "1"])[:4]
        if role != _ROLE or when != moment or int(n) != count:
            continue
        if not _claim(Path(folder) / f"{entry}@{os.getppid()}-{_GENERATION}"):
            continue  # another worker of this pool fired it
        for k in range(int(times)):
            if _claim(Path(folder) / f"{entry}#{k}"):
                os.kill(os.getpid(), signal.SIGKILL)


def _claim(marker: Path) -> bool:
    """Create ``marker``; whether this process was the first to (across processes)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


class WorkerPool:
    """A ``spawn`` process pool kept for the process's life and replaced when it breaks.

    Args:
        processes: worker processes.
        initializer: run by each worker when it starts (imports, say).
        warm: start every worker up front and wait until all have run ``initializer``, so the
            first tasks do not wait for a start-up.

    Use :func:`worker_pool` to share one pool per configuration.
    """

    def __init__(self, processes: int, initializer: Callable[[], None] | None = None, *,
                 warm: bool = False, role: str = "helper") -> None:
        self.processes, self._initializer, self._warm = processes, initializer, warm
        self.role, self._generation = role, 0
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ProcessPoolExecutor:
        """The running pool, started (or restarted after a worker died) if needed.

        Raises:
            WorkerError: a worker died while the pool started, and again in a new one.
        """
        with self._lock:
            if self._executor is not None and not _healthy(self._executor):
                _stop(self._executor)
                self._executor = None
            if self._executor is None:
                try:
                    self._executor = self._start()
                except BrokenProcessPool as lost:
                    try:
                        self._executor = self._start()
                    except BrokenProcessPool as again:
                        raise WorkerError(self._lost_twice("starting", again.args[0]
                                                           or lost.args[0])) from None
            return self._executor

    def discard(self, executor: ProcessPoolExecutor) -> None:
        """Forget ``executor`` after one of its workers died; the next use starts a new pool."""
        with self._lock:
            if self._executor is executor:
                self._executor = None
        _stop(executor)

    def map(self, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]]
            ) -> list[Any]:
        """``[function(*args) for args in arguments]``, every task submitted at once.

        Raises:
            WorkerError: see :meth:`imap`.
        """
        return list(self.imap(function, arguments, ahead=len(arguments)))

    def imap(self, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], *,
             ahead: int | Callable[[], int] = 2) -> Iterator[Any]:
        """``function(*args)`` for each of ``arguments``, in order, computed by the workers.

        At most ``ahead`` tasks beyond the one being waited for are submitted (a callable is
        asked again before each submission, so a caller can hold fewer results in memory once
        it sees they are large). Arguments and results are pickled.

        Raises:
            WorkerError: a worker died, and again in a new pool with the same task.
        """
        pending: dict[int, Future] = {}
        retried: set[int] = set()
        executor = self.executor()
        cursor = 0
        try:
            for index in range(len(arguments)):
                while True:
                    limit = ahead() if callable(ahead) else ahead
                    try:
                        while cursor < len(arguments) and cursor - index <= limit:
                            pending[cursor] = executor.submit(_task, function,
                                                              *arguments[cursor])
                            cursor += 1
                        result = pending[index].result()
                        break
                    except BrokenProcessPool:
                        ended = _how_workers_ended(executor)
                        if index in retried:
                            self.discard(executor)
                            raise WorkerError(self._lost_twice("on the same work",
                                                               ended)) from None
                        retried.update(pending)
                        self.discard(executor)
                        executor = self.executor()
                        cursor = index
                        pending.clear()
                del pending[index]
                yield result
        finally:
            for future in pending.values():
                future.cancel()

    def _start(self) -> ProcessPoolExecutor:
        """A new pool; warm, every worker started and initialised.

        Raises:
            BrokenProcessPool: a worker died while the pool started (its args: how).
        """
        self._generation += 1
        if not self._warm:
            return spawn_pool(self.processes, self._initializer, role=self.role,
                              generation=self._generation)
        ready = spawn_context().Barrier(self.processes)
        pool = spawn_pool(self.processes, _start_together, (self._initializer, ready),
                          role=self.role, generation=self._generation)
        # Each submission starts a worker while none is idle; a worker's first task waits for
        # its initializer, which waits until every worker has started. A worker that dies
        # meanwhile would hold the others at the barrier: it is broken, and they fail at once.
        futures = [pool.submit(int) for _ in range(self.processes)]
        try:
            while not all(f.done() for f in futures):
                if any(not p.is_alive() for p in list(pool._processes.values())):
                    ready.abort()
                wait(futures, timeout=_POLL_S)
            for future in futures:
                future.result()
        except (BrokenProcessPool, BrokenBarrierError):
            ended = _how_workers_ended(pool)
            _stop(pool)
            raise BrokenProcessPool(ended) from None
        return pool

    def _lost_twice(self, when: str, ended: str) -> str:
        name = "helper" if self.role == "helper" else f"{self.role} helper"
        return (f"a {name} process died twice {when} ({ended}; this run's "
                f"processes held {_tree_memory_mb():,} MB); free memory, or lower "
                f"{_SETTINGS.get(self.role, 'the processes or tile size')}")


def _how_workers_ended(executor: ProcessPoolExecutor) -> str:
    """How the workers of a broken pool ended, e.g. ``killed by SIGKILL, often the
    out-of-memory killer``."""
    workers = list((getattr(executor, "_processes", None) or {}).values())
    deadline = time.monotonic() + 1.0
    for worker in workers:  # a worker's end is seen (its pipe closes) before it can be reaped
        worker.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in workers]
    signals = [-c for c in codes if c is not None and c < 0 and c != -signal.SIGTERM]
    if signal.SIGKILL in signals:
        return "killed by SIGKILL, often the out-of-memory killer"
    if signals:
        return f"killed by {signal.Signals(signals[0]).name}"
    exits = [c for c in codes if c]
    return f"exited with status {exits[0]}" if exits else "ended abruptly"


def _tree_memory_mb() -> int:
    """Resident memory of this process and its children, in MB (Linux; 0 elsewhere)."""
    pids = [os.getpid(), *(p.pid for p in multiprocessing.active_children())]
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total // 1024


def _healthy(executor: ProcessPoolExecutor) -> bool:
    """Not broken, and none of its workers died since (a pool notices a death only later)."""
    processes = getattr(executor, "_processes", None) or {}
    return not getattr(executor, "_broken", False) and all(p.is_alive()
                                                           for p in processes.values())


def _stop(executor: ProcessPoolExecutor) -> None:
    """Shut a broken pool down and kill its remaining workers: a worker killed while it held
    the task queue's lock leaves the others blocked on it for good."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()


_POOLS: dict[tuple[Any, ...], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def worker_pool(processes: int, initializer: Callable[[], None] | None = None, *,
                warm: bool = False, role: str = "helper") -> WorkerPool:
    """The process's one :class:`WorkerPool` for these arguments (dask threads may ask at the
    same time: one pool is made, not several)."""
    key = (processes, initializer, warm, role)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = WorkerPool(processes, initializer, warm=warm, role=role)
        return _POOLS[key]


def shutdown() -> None:
    """Stop every pool of this process (tests and benchmarks call it between cases; the next
    use starts a new pool)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        with pool._lock:
            executor, pool._executor = pool._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def may_start_processes() -> bool:
    """Whether this process may start helper processes: a daemonic one (a dask or
    multiprocessing worker) may not."""
    return not multiprocessing.current_process().daemon


def trim_heap() -> bool:
    """Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

    Freed memory otherwise stays resident in this process; the pipeline calls this between
    stages so that the next one (and the helper processes it starts) does not add to the peak
    of the one before. Returns whether anything was released; a no-op off glibc.
    """
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
HEAP_MAP_THRESHOLD = 4 << 20
"""Allocations of this many bytes or more get their own memory map (see :func:`bound_heap`)."""


def bound_heap() -> bool:
    """Have glibc serve allocations of :data:`HEAP_MAP_THRESHOLD` bytes or more from their own
    memory maps, which go back to the operating system when freed.

    By default glibc raises that threshold each time such a block is freed (up to 32 MiB), so
    a tile's probabilities and CRF buffers (5-15 MiB each on 768 px tiles) soon come from the
    heaps of the threads that allocate them and stay resident after they are freed. The
    pipeline calls this when a run starts, and every helper process when it starts: on the
    16,384 px mostly-nodata mosaic the process tree's peak fell by 150-250 MB. 4 MiB, not less:
    at 1 MiB, mapping and zeroing the smaller buffers of nodata tiles took 5x the system time
    and made the run 1.3x slower. Process-wide; a no-op off glibc. Returns whether it was set.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, HEAP_MAP_THRESHOLD))
    except (OSError, AttributeError):
        return False

"""ONNX Runtime backend for deeplab-geo (the ``onnx`` backend).

The model graph (from ``deeplab-geo export-onnx``) takes raw pixels and returns probabilities,
so a predictor is a thin wrapper around ONNX Runtime sessions. A ``.safetensors`` or ``.pth``
checkpoint is exported to ONNX once and kept in the cache folder (see
:func:`deeplab_geo.tools.export.cached_onnx`), so later runs load it without importing torch.

On the CPU, ONNX Runtime's threads inside one operator leave much of a core idle on the small
convolutions of MobileNet-style models; a batch is therefore split across ``streams`` sessions
of ``threads`` intra-op threads each, which run at the same time (about 1.25x the throughput of
one session using every core, measured on 2 cores). A batch of one tile uses one session with
every core. Sessions are cached per (checkpoint, device): each process builds them once.

Memory: every CPU session of the process allocates from one CPU arena registered with ONNX Runtime's
environment, instead of an arena each, and without memory patterns (a buffer planned per input
shape): the whole, split and edge batches of a run then reuse the same blocks. On the demo model's
768 px tiles, ten mixed batches peaked at about 620 MB instead of 1,110 MB, at the same speed
(``benchmarks/README.md``, "Mostly-nodata rasters").
"""

from __future__ import annotations

import functools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deeplab_geo.checkpoints import ModelInfo, read_info, resolve
from deeplab_geo.errors import BackendError
from deeplab_geo.hookspecs import Backend, Predictor, checked_tiles, hookimpl
from deeplab_geo_onnx.zoo import ZooPredictor, is_zoo_model, read_zoo_model

__version__ = "0.1.0"

MAX_STREAMS = 4
"""At most this many sessions share a batch (each holds its own copy of the weights)."""


class OnnxPredictor(Predictor):
    """ONNX Runtime sessions turning raw tiles into class probabilities.

    Args:
        make_session: builds a session with a given number of intra-op threads.
        info: the model's metadata.
        cores: CPU cores to use; ``None`` for a GPU session (one session, no splitting).
    """

    def __init__(self, make_session, info: ModelInfo, cores: int | None) -> None:
        self.info = info
        self._make_session = make_session
        self.streams = 1 if cores is None else max(1, min(MAX_STREAMS, cores))
        self.threads = None if cores is None else max(1, cores // self.streams)
        self._whole = make_session(cores)
        self._parts: list[ort.InferenceSession] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        pixels = checked_tiles(tiles, self.info)
        if self.streams == 1 or len(pixels) == 1:
            return _run(self._whole, pixels)
        sessions, pool = self._split_sessions()
        parts = np.array_split(pixels, min(len(sessions), len(pixels)))
        futures = [pool.submit(_run, session, np.ascontiguousarray(part))
                   for session, part in zip(sessions, parts)]
        return np.concatenate([future.result() for future in futures])

    def _split_sessions(self) -> tuple[list[ort.InferenceSession], ThreadPoolExecutor]:
        with self._lock:
            if not self._parts:
                self._parts = [self._make_session(self.threads) for _ in range(self.streams)]
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="onnx")
            return self._parts, self._pool


def _run(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    return session.run(["probabilities"], {"pixels": pixels})[0]


class OnnxBackend(Backend):
    name = "onnx"
    description = "ONNX Runtime (CPU provider; CUDA provider when available)"
    # Preferred on CPU: about 1.5x the throughput of the torch backend on the demo model
    # (benchmarks/backends.py); on CUDA the torch backend's autocast wins.
    auto_priority = {"cpu": 20}

    def load(self, checkpoint: str, *, device: str = "auto",
             metadata: dict | None = None) -> OnnxPredictor | ZooPredictor:
        """Load a checkpoint or an ``.onnx`` file; ``metadata`` adds to (or corrects) a
        foreign model's own (see :mod:`deeplab_geo_onnx.zoo`)."""
        return _load_cached(str(resolve(checkpoint)), device,
                            json.dumps(metadata or {}, sort_keys=True))

    def release(self) -> None:
        """Forget the loaded sessions."""
        _load_cached.cache_clear()


def providers_for(device: str) -> list[str]:
    """Execution providers for a ``model.device`` value."""
    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendError(f"device '{device}' requested but this onnxruntime has no CUDA "
                               "provider; install onnxruntime-gpu or use device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=4)
def _load_cached(checkpoint: str, device: str, metadata: str) -> OnnxPredictor | ZooPredictor:
    if checkpoint.endswith(".onnx") and is_zoo_model(Path(checkpoint)):
        info, spec = read_zoo_model(Path(checkpoint), json.loads(metadata))
        return ZooPredictor(_session(checkpoint, checkpoint, providers_for(device), None),
                            info, spec)
    if checkpoint.endswith(".onnx"):
        model, info = checkpoint, read_info(checkpoint)
    else:
        from deeplab_geo.tools.export import cached_onnx

        model, info = cached_onnx(checkpoint)
    providers = providers_for(device)
    on_gpu = providers[0] != "CPUExecutionProvider"
    return OnnxPredictor(lambda threads: _session(checkpoint, model, providers, threads), info,
                         None if on_gpu else cpu_cores())


_SHARED_ARENA = {"registered": False}
_ARENA_LOCK = threading.Lock()


def shared_cpu_arena() -> bool:
    """Register one CPU arena with ONNX Runtime's environment, once per process, for every
    session to allocate from; returns whether it is there (False where this onnxruntime cannot
    register one, and sessions keep an arena each)."""
    with _ARENA_LOCK:
        if not _SHARED_ARENA["registered"]:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            try:
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            except Exception:  # noqa: BLE001 - onnxruntime raises its own untyped errors
                return False  # an onnxruntime without environment allocators
            _SHARED_ARENA["registered"] = True
        return True


def _session(checkpoint: str, model: str | bytes, providers: list[str],
             threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    if providers[0] == "CPUExecutionProvider":  # GPU sessions keep ONNX Runtime's defaults
        options.enable_mem_pattern = False
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise BackendError(f"{Path(checkpoint).name}: ONNX Runtime cannot load the model "
                           f"({str(exc).splitlines()[0]})") from None


@hookimpl
def register_backends():
    return [OnnxBackend()]

"""OpenVINO backend for deeplab-geo (the ``openvino`` backend), on the CPU.

It runs what the ``onnx`` backend runs, from the same files: a deeplab-geo checkpoint through
its cached ONNX export (:func:`deeplab_geo.tools.export.cached_onnx`), an exported ``.onnx``,
or a zoo ``.onnx`` model unmodified (its pre- and post-processing are the ``onnx`` backend's,
:class:`deeplab_geo_onnx.zoo.ZooPredictor`).

The model is compiled once per input shape, for one tile (OpenVINO runs a fixed shape about
30% faster than a dynamic one), with the latency hint: each tile uses every core, one after
the other. On 2 cores that was as fast as the throughput hint's two streams on batches of four
768 px tiles (5.4 against 5.1 Mpx/s) and twice as fast on the pipeline's many batches of one
tile (tiles of one size are batched together, and edge tiles differ). A model whose batch is
fixed above one is compiled for that batch instead.

Precision (``model.precision``): ``fp32`` asks for f32 explicitly, since OpenVINO's own
default on CPUs with AMX is bf16; ``bf16`` runs bf16 where the CPU has it natively (refused
elsewhere: emulated, it is slower than fp32); ``auto`` is fp32 (bf16 changed the demo model's
mIoU by up to 1.4 points on held-out scenes: it is not validated for it). INT8 models are
OpenVINO IRs made by ``deeplab-geo quantize`` (:mod:`deeplab_geo_openvino.quantize`): a
``model.xml`` checkpoint runs INT8; ``int8`` asks that it be one.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from deeplab_geo_onnx.zoo import ZooPredictor, is_zoo_model, read_zoo_model

from deeplab_geo.checkpoints import ModelInfo, read_info, resolve
from deeplab_geo.errors import BackendError
from deeplab_geo.hookspecs import Backend, Predictor, checked_tiles, hookimpl

__version__ = "0.1.0"

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""``model.precision`` values and OpenVINO's inference precision hint for each (an INT8 model's
quantised layers run int8 whatever the hint; the others run f32)."""


@functools.lru_cache(maxsize=1)
def core() -> ov.Core:
    """The process's one OpenVINO core."""
    return ov.Core()


def native_precisions() -> set[str]:
    """The precisions this CPU runs natively (``fp32`` always; ``bf16`` with AVX-512 BF16 or
    AMX), from OpenVINO's ``OPTIMIZATION_CAPABILITIES``."""
    capabilities = set(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return {"fp32"} | ({"bf16"} if "BF16" in capabilities else set())


def choose_precision(asked: str, native: set[str] | None = None) -> str:
    """The precision to run for ``model.precision`` (see the module docstring).

    Raises:
        BackendError: ``bf16`` on a CPU without it, or a precision this backend lacks.
    """
    native = native_precisions() if native is None else native
    if asked in ("auto", "int8"):  # int8: the model's own (checked when it loads)
        return "fp32" if asked == "auto" else "int8"
    if asked not in PRECISIONS:
        raise BackendError(f"model.precision {asked}: the openvino backend runs "
                           f"{' or '.join(PRECISIONS)}; use one of them or auto")
    if asked not in native:
        raise BackendError(f"model.precision {asked}: this CPU has no native {asked} (it would "
                           "be emulated, slower than fp32); use fp32 or auto")
    return asked


class Runner:
    """A model compiled per input shape, called like an ONNX Runtime session
    (``run(output_names, feeds)``), so that the zoo predictor runs on it unchanged."""

    def __init__(self, path: str, precision: str) -> None:
        self.name = Path(path).name
        try:
            self._model = core().read_model(path)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own untyped errors
            raise BackendError(f"{self.name}: OpenVINO cannot read the model "
                               f"({str(exc).strip().splitlines()[0]})") from None
        self._config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                        "PERFORMANCE_HINT": "LATENCY"}
        batch = self._model.input(0).get_partial_shape()[0]
        self._fixed_batch = batch.get_length() if batch.is_static else None
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]
            ) -> list[np.ndarray]:
        (pixels,) = feeds.values()
        per_tile = self._fixed_batch in (None, 1)
        shape = (1, *pixels.shape[1:]) if per_tile else tuple(pixels.shape)
        compiled = self._compiled_for(shape)
        index = _output_index(compiled, output_names)
        if not per_tile:
            return [compiled(pixels)[index]]
        request = compiled.create_infer_request()
        return [np.concatenate([request.infer({0: np.ascontiguousarray(pixels[i:i + 1])})[index]
                                for i in range(len(pixels))])]

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        with self._lock:
            if shape not in self._compiled:
                model = self._model.clone()
                model.reshape({model.input(0): ov.PartialShape(list(shape))})
                try:
                    compiled = core().compile_model(model, "CPU", self._config)
                except Exception as exc:  # noqa: BLE001 - OpenVINO's own untyped errors
                    raise BackendError(f"{self.name}: OpenVINO cannot compile the model for "
                                       f"{shape} ({str(exc).strip().splitlines()[0]})") from None
                self._compiled[shape] = compiled
            return self._compiled[shape]


def _output_index(compiled: Any, names: list[str] | None) -> int:
    if names:
        for i, output in enumerate(compiled.outputs):
            if names[0] in output.get_names():
                return i
    return 0


class OpenVinoPredictor(Predictor):
    """Raw tiles to class probabilities, for models exported by deeplab-geo."""

    def __init__(self, runner: Runner, info: ModelInfo, precision: str) -> None:
        self.info, self.precision, self._runner = info, precision, runner

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return self._runner.run(["probabilities"], {"pixels": checked_tiles(tiles, self.info)})[0]


class OpenVinoBackend(Backend):
    name = "openvino"
    description = "OpenVINO (CPU; fp32, or bf16 where the CPU has it: model.precision)"
    # Not chosen by `auto` yet: the pipeline's memory and end-to-end figures are measured
    # with ONNX Runtime (see the README of this plugin).
    auto_priority = {"cpu": 10}

    def load(self, checkpoint: str, *, device: str = "auto", metadata: dict | None = None,
             precision: str = "auto") -> OpenVinoPredictor | ZooPredictor:
        """Load a checkpoint or an ``.onnx`` file (zoo models included, with ``metadata`` as
        for the ``onnx`` backend) at ``precision``."""
        if device not in ("auto", "cpu"):
            raise BackendError(f"device '{device}': the openvino backend runs on the CPU; use "
                               "model.backend onnx or torch for CUDA")
        return _load_cached(str(resolve(checkpoint)), json.dumps(metadata or {}, sort_keys=True),
                            choose_precision(precision))

    def release(self) -> None:
        """Forget the compiled models."""
        _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(checkpoint: str, metadata: str, precision: str
                 ) -> OpenVinoPredictor | ZooPredictor:
    quantized = checkpoint.endswith(".xml")
    if precision == "int8" and not quantized:
        raise BackendError(f"model.precision int8: {Path(checkpoint).name} is not an INT8 "
                           "model; make one with `deeplab-geo quantize` and give its "
                           "model.xml as model.checkpoint")
    if quantized:  # an OpenVINO IR from `deeplab-geo quantize`, model.json beside it
        return OpenVinoPredictor(Runner(checkpoint, "fp32"), read_info(checkpoint), "int8")
    if checkpoint.endswith(".onnx") and is_zoo_model(Path(checkpoint)):
        info, spec = read_zoo_model(Path(checkpoint), json.loads(metadata))
        return ZooPredictor(Runner(checkpoint, precision), info, spec)
    if checkpoint.endswith(".onnx"):
        path, info = checkpoint, read_info(checkpoint)
    else:
        from deeplab_geo.tools.export import cached_onnx

        path, info = cached_onnx(checkpoint)
        if isinstance(path, bytes):  # the cache folder could not be written
            raise BackendError(f"{Path(checkpoint).name}: the openvino backend reads the ONNX "
                               "export from the cache folder, which cannot be written; set "
                               "DEEPLAB_GEO_CACHE to a writable folder")
    return OpenVinoPredictor(Runner(path, precision), info, precision)


@hookimpl
def register_backends():
    return [OpenVinoBackend()]

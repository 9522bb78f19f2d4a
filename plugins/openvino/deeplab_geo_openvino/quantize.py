"""INT8 models: NNCF post-training quantisation on tiles of the user's own rasters, checked
against fp32 before anything is written.

Tiles are drawn at random from the calibration rasters (windows whose pixels are mostly valid),
resampled to the model's resolution and blanked where nodata, exactly as inference prepares
them; the model graph normalises them itself. One part calibrates, the rest are held out: the
quantised model's classes are compared with fp32's on them, and a model that agrees on fewer
pixels than ``min_agreement`` is refused. The result is an OpenVINO IR (``model.xml`` and
``model.bin``) with deeplab-geo's ``model.json`` beside it (the run's settings and figures under
``training.quantized``) and ``quantize.json``, the report; ``model.checkpoint: DIR/model.xml``
runs it on the ``openvino`` backend.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from rasterio.windows import Window

from deeplab_geo.checkpoints import ModelInfo, read_info, resolve, write_metadata
from deeplab_geo.errors import CheckpointError, InputError
from deeplab_geo.raster import io, resample
from deeplab_geo_openvino import core

_MIN_VALID = 0.5  # a window holds at least this share of valid pixels to be drawn


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize` measured (``quantize.json``)."""

    checkpoint: str
    tile: int
    calibration_tiles: int
    held_out_tiles: int
    agreement: float
    min_agreement: float
    fp32_mpx_s: float
    int8_mpx_s: float


def quantize(checkpoint: str, rasters: list[Path], out: Path, *, tile: int = 512,
             tiles: int = 96, held_out: float = 0.33, min_agreement: float = 0.97,
             seed: int = 0) -> QuantizeReport:
    """Quantise ``checkpoint`` to INT8 into the folder ``out`` (see the module docstring).

    Raises:
        InputError: the rasters hold too few valid windows of ``tile`` px.
        CheckpointError: the INT8 model agrees with fp32 on fewer held-out pixels than
            ``min_agreement``; nothing is written.
    """
    import nncf

    path, info = _onnx(checkpoint)
    samples = _draw_tiles(rasters, info, tile, tiles, seed)
    split = max(1, round(len(samples) * held_out))
    calibration, holdout = samples[split:], samples[:split]
    model = core().read_model(path)
    model.reshape({model.input(0): ov.PartialShape([1, info.in_channels, tile, tile])})
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              fast_bias_correction=True)
    fp32 = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                               "PERFORMANCE_HINT": "LATENCY"})
    int8 = core().compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    (fp32_classes, fp32_speed), (int8_classes, int8_speed) = (_classes(fp32, holdout),
                                                              _classes(int8, holdout))
    agreement = float(np.mean(fp32_classes == int8_classes))
    report = QuantizeReport(str(checkpoint), tile, len(calibration), len(holdout),
                            round(agreement, 5), min_agreement, round(fp32_speed, 3),
                            round(int8_speed, 3))
    if agreement < min_agreement:
        raise CheckpointError(
            f"{Path(str(checkpoint)).name}: the INT8 model agrees with fp32 on {agreement:.1%} "
            f"of {len(holdout)} held-out tiles' pixels, below {min_agreement:.0%}; calibrate on "
            "more or other rasters, or lower --min-agreement; nothing written")
    _write(out, quantized, info, report)
    return report


def _onnx(checkpoint: str) -> tuple[str, ModelInfo]:
    weights = str(resolve(checkpoint))
    if weights.endswith(".onnx"):
        return weights, read_info(weights)
    from deeplab_geo.tools.export import cached_onnx

    path, info = cached_onnx(checkpoint)
    if isinstance(path, bytes):
        raise CheckpointError("the ONNX export could not be cached; set DEEPLAB_GEO_CACHE to a "
                              "writable folder")
    return path, info


def _draw_tiles(rasters: list[Path], info: ModelInfo, tile: int, count: int, seed: int
                ) -> list[np.ndarray]:
    """``count`` tiles ``(1, bands, tile, tile)`` at the model's resolution, as inference
    prepares them."""
    rng = np.random.default_rng(seed)
    found: list[np.ndarray] = []
    for attempt in range(count * 20):
        if len(found) == count:
            break
        with io.open_raster(rasters[attempt % len(rasters)]) as ds:
            io.check_raster(ds, bands=info.in_channels)
            scale = _scale(ds, info)
            size = max(1, round(tile / scale))
            if ds.width < size or ds.height < size:
                raise InputError(f"{Path(ds.name).name}: smaller than one {tile} px tile at "
                                 "the model's resolution; give larger rasters or --tile-size")
            row, col = rng.integers(0, ds.height - size + 1), rng.integers(0, ds.width - size + 1)
            data, valid = io.read_window(ds, Window(col, row, size, size))
        if data is None or valid.mean() < _MIN_VALID:
            continue
        pixels = io.blank_nodata(data, valid).astype(np.float32)
        if size != tile:
            pixels = resample.resize(pixels, (tile, tile))
        found.append(np.ascontiguousarray(pixels[None]))
    if len(found) < 4:
        raise InputError(f"the calibration rasters hold {len(found)} windows of {tile} px with "
                         "mostly valid pixels; give rasters with more data")
    return found


def _scale(ds: Any, info: ModelInfo) -> float:
    """Model pixels per raster pixel (1 where either resolution is unknown)."""
    if ds.crs is None or info.resolution is None:
        return 1.0
    return io.ground_pixel_size_m(ds) / info.resolution


def _classes(compiled: Any, tiles: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The classes of ``tiles`` and the throughput (Mpx/s, after one warm-up tile)."""
    import time

    compiled(tiles[0])
    started = time.perf_counter()
    classes = np.stack([compiled(t)[0].argmax(1) for t in tiles])
    seconds = time.perf_counter() - started
    return classes, sum(t[0, 0].size for t in tiles) / 1e6 / seconds


def _write(out: Path, model: Any, info: ModelInfo, report: QuantizeReport) -> None:
    """``out/model.xml``, ``model.bin``, ``model.json`` and ``quantize.json``, all or none."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deeplab-geo-", dir=out.parent))
    try:
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        training = {**(info.training or {}), "quantized": dataclasses.asdict(report)}
        write_metadata(staging / "model.xml", dataclasses.replace(info, training=training))
        (staging / "quantize.json").write_text(json.dumps(dataclasses.asdict(report), indent=2)
                                               + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for path in staging.iterdir():
            path.replace(out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

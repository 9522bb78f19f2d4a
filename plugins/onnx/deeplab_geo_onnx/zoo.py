"""Foreign ONNX segmentation models, run unmodified: Deepness and GeoDeep zoo files and others.

What a model is comes from three places, later ones winning:

1. its graph: the input's name, dtype, channels and any fixed batch, height and width; the
   first output's shape (``(B, C, H, W)`` scores, or ``(B, 1, H, W)`` for a binary model), and
   whether the graph ends in a ``Softmax`` or ``Sigmoid`` (otherwise the scores are logits and
   get one here);
2. its ``metadata_props`` (values are JSON strings), as the zoos write them: ``model_type``
   (must be a segmentor), ``class_names`` (id -> name; legacy ``names``; for several outputs a
   list, of which the first is used), ``resolution`` (cm/px), ``tiles_size`` or ``tile_size``,
   ``tiles_overlap`` (percent of the tile), ``standardization_mean`` / ``standardization_std``
   (applied after dividing by 255), ``seg_thresh`` (probabilities below it are set to 0 before
   the argmax, as Deepness does);
3. a JSON file beside the model (``model.json`` for ``model.onnx``) with the same keys, and
   the pipeline's ``model.metadata``.

Float inputs get pixels divided by 255 and standardized; uint8 inputs get the pixels as they
are. Outputs smaller than the input (valid convolutions) are centre-aligned and their border is
filled with the nearest predicted value. A model without class names is refused with one line
naming the key and how to supply it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_geo.checkpoints import ModelInfo
from deeplab_geo.datasets.voc import voc_palette
from deeplab_geo.errors import CheckpointError
from deeplab_geo.hookspecs import Predictor, checked_tiles, normalized_tiles

METADATA_KEYS = ("model_type", "class_names", "names", "resolution", "tiles_size", "tile_size",
                 "tiles_overlap", "standardization_mean", "standardization_std", "seg_thresh",
                 "seg_small_segment", "in_channels")
"""Keys read from ``metadata_props``, a sidecar JSON or ``model.metadata``."""


@dataclass(frozen=True)
class ZooSpec:
    """How to feed a foreign graph and read its output."""

    input_name: str
    input_dtype: np.dtype
    output_name: str
    output: str  # "probabilities", "logits", "sigmoid" or "sigmoid-logits"
    batch: int | None  # fixed batch size
    size: tuple[int, int] | None  # fixed input height and width
    output_size: tuple[int, int] | None  # fixed output height and width
    threshold: float | None = None


def is_zoo_model(path: Path) -> bool:
    """Whether ``path`` (.onnx) is a foreign model: its sidecar, if any, is not ours."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return True
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("format") != "deeplab-geo/1"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return True


def read_zoo_model(path: Path, overrides: dict[str, Any] | None = None
                   ) -> tuple[ModelInfo, ZooSpec]:
    """The metadata and I/O of a foreign ONNX model (see the module docstring).

    Raises:
        CheckpointError: not a segmentation model, missing class names, or a graph whose
            inputs or outputs deeplab-geo cannot feed or read.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others
        raise CheckpointError(f"{path.name}: not a readable ONNX model ({exc})") from None
    meta = {item.key: _value(item.value) for item in model.metadata_props}
    meta.update(_sidecar(path))
    meta.update(overrides or {})
    if str(meta.get("model_type", "Segmentor")).lower() not in ("segmentor", "segmentation"):
        raise CheckpointError(f"{path.name}: model_type is {meta['model_type']!r}; deeplab-geo "
                              "runs segmentation models (model_type Segmentor)")
    spec, channels, classes_out = _graph(model, path)
    channels = channels or meta.get("in_channels")
    if channels is None:
        raise CheckpointError(f"{path.name}: the graph leaves the band count open; give "
                              "in_channels in a JSON beside the model or in model.metadata")
    names = _class_names(meta, path)
    if spec.output.startswith("sigmoid"):
        names = names if len(names) == 2 else ["background", *names][-2:]
    elif len(names) != classes_out:
        raise CheckpointError(f"{path.name}: class_names lists {len(names)} classes but the "
                              f"model outputs {classes_out}; fix class_names")
    size = spec.size
    tile = meta.get("tiles_size", meta.get("tile_size"))
    if size is None and tile is not None:
        size = (int(tile), int(tile))
    if size is not None and size[0] != size[1]:
        raise CheckpointError(f"{path.name}: the model takes {size[0]} x {size[1]} inputs; "
                              "deeplab-geo cuts square tiles")
    overlap = meta.get("tiles_overlap")
    mean = meta.get("standardization_mean", [0.0] * int(channels))
    std = meta.get("standardization_std", [1.0] * int(channels))
    scale = 255.0 if spec.input_dtype.kind == "f" else 1.0
    resolution = meta.get("resolution")
    info = ModelInfo(
        architecture="onnx", num_classes=len(names), classes=names,
        colours=voc_palette(len(names) + 1)[1:], in_channels=int(channels), output_stride=1,
        normalization={"scale": scale, "mean": [float(v) for v in mean],
                       "std": [float(v) for v in std]},
        options={"source": "onnx metadata",
                 **({"seg_small_segment": meta["seg_small_segment"]}
                    if "seg_small_segment" in meta else {})},
        resolution=None if resolution is None else float(resolution) / 100.0,
        input_size=None if size is None else int(size[0]), batch_size=spec.batch,
        overlap=None if overlap is None or size is None else round(size[0] * float(overlap)
                                                                    / 100))
    threshold = meta.get("seg_thresh")
    return info, replace(spec, threshold=None if threshold is None else float(threshold))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{sidecar}: not valid JSON; fix or remove it") from None
    return {k: v for k, v in data.items() if k in METADATA_KEYS} if isinstance(data, dict) \
        else {}


def _class_names(meta: dict[str, Any], path: Path) -> list[str]:
    names = meta.get("class_names", meta.get("names"))
    if isinstance(names, list) and names and isinstance(names[0], dict):
        names = names[0]  # one mapping per output: the first output is the segmentation
    if isinstance(names, dict):
        try:
            ordered = sorted((int(k), str(v)) for k, v in names.items())
        except ValueError:
            ordered = []
        if ordered and [k for k, _ in ordered] == list(range(len(ordered))):
            return [v for _, v in ordered]
    elif isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    raise CheckpointError(
        f"{path.name}: no class_names in the model's metadata; add "
        '{"class_names": {"0": "name", ...}} to a JSON beside the model or set '
        "model.metadata.class_names in the pipeline")


def _graph(model: Any, path: Path) -> tuple[ZooSpec, int | None, int | None]:
    """The I/O spec, the input's band count and the output's class count from the graph."""
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CheckpointError(f"{path.name}: the model has {len(inputs)} inputs; deeplab-geo "
                              "feeds one image tensor")
    source, target = inputs[0], model.graph.output[0]
    in_dims = _dims(source)
    out_dims = _dims(target)
    if len(in_dims) != 4:
        raise CheckpointError(f"{path.name}: the input {source.name!r} has {len(in_dims)} "
                              "dimensions; deeplab-geo feeds (batch, bands, height, width)")
    if len(out_dims) != 4:
        raise CheckpointError(f"{path.name}: the output {target.name!r} has {len(out_dims)} "
                              "dimensions; deeplab-geo reads (batch, classes, height, width) "
                              "scores")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(source.type.tensor_type.elem_type))
    last = next((node.op_type for node in model.graph.node if target.name in node.output), "")
    classes = out_dims[1]
    if classes == 1:
        kind = "sigmoid" if last == "Sigmoid" else "sigmoid-logits"
    else:
        kind = "probabilities" if last == "Softmax" else "logits"
    size = (in_dims[2], in_dims[3]) if in_dims[2] and in_dims[3] else None
    out_size = (out_dims[2], out_dims[3]) if out_dims[2] and out_dims[3] else None
    spec = ZooSpec(source.name, dtype, target.name, kind, in_dims[0], size, out_size)
    return spec, in_dims[1], classes


def _dims(value: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


class ZooPredictor(Predictor):
    """Raw tiles in, class probabilities out, for a foreign graph (see the module docstring).

    Tiles smaller than a fixed input are padded (reflected) and cropped back; batches are padded
    to a fixed batch size or cut into several runs of it.
    """

    def __init__(self, session: Any, info: ModelInfo, spec: ZooSpec) -> None:
        self.session, self.info, self.spec = session, info, spec

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        from deeplab_geo.errors import BackendError

        checked_tiles(tiles, self.info)
        height, width = tiles.shape[-2:]
        pixels = self._prepare(tiles)
        if self.spec.size is not None:
            pad_h, pad_w = self.spec.size[0] - height, self.spec.size[1] - width
            if pad_h < 0 or pad_w < 0:
                raise BackendError(f"tiles of {height} x {width} px are larger than the "
                                   f"model's fixed {self.spec.size[0]} x {self.spec.size[1]}")
            pixels = np.pad(pixels, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect"
                            if min(height, width) > 1 else "edge")
        step = self.spec.batch or len(pixels)
        parts = []
        for start in range(0, len(pixels), step):
            part = pixels[start:start + step]
            if len(part) < step:
                part = np.concatenate([part, np.repeat(part[-1:], step - len(part), 0)])
            out = self.session.run([self.spec.output_name], {self.spec.input_name: part})[0]
            parts.append(out[: len(pixels) - start])
        scores = np.concatenate(parts).astype(np.float32, copy=False)
        probs = self._probabilities(scores)
        probs = _centre(probs, pixels.shape[-2:])
        return np.ascontiguousarray(probs[..., :height, :width])

    def _prepare(self, tiles: np.ndarray) -> np.ndarray:
        if self.spec.input_dtype.kind != "f":
            return np.ascontiguousarray(tiles.astype(self.spec.input_dtype))
        values = normalized_tiles(tiles, self.info)
        return np.ascontiguousarray(values.astype(self.spec.input_dtype))

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        kind = self.spec.output
        if kind in ("sigmoid", "sigmoid-logits"):
            p = scores if kind == "sigmoid" else 1 / (1 + np.exp(-scores))
            probs = np.concatenate([1 - p, p], axis=1)
        elif kind == "logits":
            e = np.exp(scores - scores.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
        else:
            probs = scores
        if self.spec.threshold is not None:  # Deepness: weak scores take no part in the argmax
            probs = np.where(probs < self.spec.threshold, 0.0, probs).astype(np.float32)
        return probs


def _centre(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Output smaller than the input, centred in it, its border the nearest predicted value."""
    out_h, out_w = probs.shape[-2:]
    if (out_h, out_w) == tuple(size):
        return probs
    top, left = (size[0] - out_h) // 2, (size[1] - out_w) // 2
    if top < 0 or left < 0:
        raise CheckpointError(f"the model's output ({out_h} x {out_w}) is larger than its "
                              f"input ({size[0]} x {size[1]})")
    return np.pad(probs, ((0, 0), (0, 0), (top, size[0] - out_h - top),
                          (left, size[1] - out_w - left)), mode="edge")

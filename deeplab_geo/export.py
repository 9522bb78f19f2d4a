"""Export a checkpoint to ONNX: raw pixels in, class probabilities out.

The exported graph includes the checkpoint's band normalisation and the final softmax, so a
runtime only feeds ``(B, bands, H, W)`` float32 pixels (input ``pixels``) and reads
``(B, classes, H, W)`` probabilities (output ``probabilities``). Batch, height and width are
dynamic. The checkpoint's JSON metadata is written beside the ``.onnx`` file.
"""

from __future__ import annotations

import io as _io
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from deeplab_geo.errors import OutputError
from deeplab_geo.models.checkpoint import FORMAT, ModelInfo, load_checkpoint, metadata_path

DEFAULT_OPSET = 17


class _Deployable(nn.Module):
    """Normalise raw pixels, run the model, return softmax probabilities."""

    def __init__(self, model: nn.Module, info: ModelInfo) -> None:
        super().__init__()
        self.model = model
        norm = info.normalization
        scale = float(norm.get("scale", 1.0))
        shape = (1, info.in_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(shape) * scale)
        self.register_buffer("std", torch.tensor(norm["std"]).view(shape) * scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((pixels - self.mean) / self.std)["out"], dim=1)


def export_onnx_bytes(checkpoint: str | Path, *, opset: int = DEFAULT_OPSET,
                      sample_size: int = 64) -> tuple[bytes, ModelInfo]:
    """The ONNX model of a checkpoint, as bytes, with its metadata."""
    model, info = load_checkpoint(checkpoint)
    deployable = _Deployable(model, info).eval()
    sample = torch.rand(1, info.in_channels, sample_size, sample_size) * 255
    buffer = _io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(
            deployable, (sample,), buffer, dynamo=False, opset_version=opset,
            input_names=["pixels"], output_names=["probabilities"],
            dynamic_axes={"pixels": {0: "batch", 2: "height", 3: "width"},
                          "probabilities": {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue(), info


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``out`` (.onnx) and its ``.json`` metadata; returns the ONNX path."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise OutputError(f"{out}: the exported file name must end in .onnx")
    data, info = export_onnx_bytes(checkpoint, opset=opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    meta = {"format": FORMAT, **asdict(info)}
    metadata_path(out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
